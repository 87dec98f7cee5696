"""A tool added the way every tool is: this one module (args with roles, run function, examples, few-shot line,
description of what it does, typed result) plus one registry line in the test that uses it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from synthehr.tools.base import Figure, SourceRef, ToolInputError, ToolResult, ToolSpec
from synthehr.tools.deps import Deps


class HbA1cUnitsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    percent: float = Field(description="HbA1c in NGSP percent, e.g. 7.5.")
    dataset: str | None = Field(None, json_schema_extra={"role": "dataset"},
                                description="Unused; present to show a grounded role.")
    chart: bool = Field(False, description="Also save the conversion as a CSV table and an SVG chart.")


def hba1c_units(deps: Deps, args: HbA1cUnitsArgs) -> ToolResult:
    """NGSP % to IFCC mmol/mol (IFCC = 10.929 x (NGSP - 2.15))."""
    if not 3 <= args.percent <= 20:
        raise ToolInputError(f"HbA1c {args.percent:g} % is outside 3-20 %; give a value in that range")
    mmol = round(10.929 * (args.percent - 2.15))
    files: list[str] = []
    if args.chart:  # files it writes (in the workspace) and which of them are plots: declared on the result
        out = deps.workspace.datasets_dir / "hba1c-units"
        out.mkdir(parents=True, exist_ok=True)
        table, chart = out / f"hba1c-{args.percent:g}.csv", out / f"hba1c-{args.percent:g}.svg"
        table.write_text(f"ngsp_percent,ifcc_mmol_mol\n{args.percent:g},{mmol}\n", encoding="utf-8")
        chart.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="120" height="20">'
                         f'<rect width="{mmol}" height="20"/></svg>', encoding="utf-8")
        files = [str(table), str(chart)]
    return ToolResult(
        text=f"HbA1c {args.percent:g} % = {mmol} mmol/mol (IFCC).",
        data={"percent": args.percent, "mmol_mol": mmol},
        files=files,
        plots=[f for f in files if f.endswith(".svg")],
        summary=f"An HbA1c of {args.percent:g}% is {mmol} mmol/mol in IFCC units.",
        figures=[Figure("HbA1c (IFCC)", mmol, "mmol/mol")],
        sources=[SourceRef("NGSP: IFCC-NGSP master equation", "https://ngsp.org/ifccngsp.asp")],
    )


SPEC = ToolSpec(
    name="hba1c_units",
    description="Convert an HbA1c value from NGSP percent to IFCC mmol/mol with the IFCC-NGSP master equation.",
    args_model=HbA1cUnitsArgs,
    func=hba1c_units,
    examples=("convert an HbA1c of 7.5 % to mmol/mol", "what is HbA1c 6.5% in IFCC units?"),
    router_examples=("HbA1c 8 percent in mmol per mol", "express an A1c of 9 % in mmol/mol",
                     "IFCC value of an HbA1c of 7 percent", "turn HbA1c 6 % into mmol/mol"),
    few_shot={"request": "HbA1c 9 % in mmol/mol?", "thought": "Convert the unit.", "args": {"percent": 9.0},
              "observation": "HbA1c 9 % = 75 mmol/mol (IFCC).", "final": "An HbA1c of 9% is 75 mmol/mol."},
    describe=lambda deps, args: f"Converting HbA1c {args.percent:g}% to IFCC mmol/mol.",
)
