"""privacy_budget: how much of each data source's privacy budget has been spent, and on what."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from synthehr.tools.base import ToolResult, ToolSpec
from synthehr.tools.deps import Deps


class PrivacyBudgetArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        None, json_schema_extra={"role": "source"}, description="Data source name, e.g. nhanes-2017-2018. Leave empty for every registered source."
    )


def privacy_budget(deps: Deps, args: PrivacyBudgetArgs) -> ToolResult:
    names = [args.source] if args.source else deps.catalog.names()
    for name in names:
        deps.catalog.get(name)  # corrective error listing valid sources
    p = deps.settings.privacy
    rows = []
    lines = []
    for name in names:
        eps, delta = deps.workspace.spent(name)
        charges = deps.workspace.charges(name)
        rows.append(
            {
                "source": name,
                "spent_epsilon": eps,
                "spent_delta": delta,
                "budget_epsilon": p.source_budget_epsilon,
                "budget_delta": p.source_budget_delta,
                "left_epsilon": max(p.source_budget_epsilon - eps, 0.0),
                "left_delta": max(p.source_budget_delta - delta, 0.0),
                "charges": [c.__dict__ for c in charges],
            }
        )
        lines.append(
            f"{name}: spent epsilon {eps:.3g} of {p.source_budget_epsilon:g} (left {max(p.source_budget_epsilon - eps, 0):.3g}), "
            f"delta {delta:.2g} of {p.source_budget_delta:.2g}, in {len(charges)} charge(s)."
        )
    from synthehr.tools.base import Figure

    figures = []
    for r in rows:
        figures += [Figure(label=f"epsilon spent on {r['source']}", value=round(r["spent_epsilon"], 3)),
                    Figure(label=f"epsilon left for {r['source']}", value=round(r["left_epsilon"], 3)),
                    Figure(label=f"epsilon budget of {r['source']}", value=r["budget_epsilon"])]
    summary = "The privacy budget of " + ", ".join(r["source"] for r in rows) + ":" if rows else "No data source is registered."
    return ToolResult(text=" ".join(lines), data={"sources": rows}, summary=summary, figures=figures)


SPEC = ToolSpec(
    name="privacy_budget",
    description=(
        "Show how much differential-privacy budget (epsilon, delta) each real data source has spent on training "
        "generators and how much is left."
    ),
    args_model=PrivacyBudgetArgs,
    func=privacy_budget,
    examples=("how much privacy budget is left?", "what epsilon has NHANES spent so far?"),
    router_examples=("how much epsilon is left for NHANES?", "show the privacy ledger",
                     "how much privacy budget have we spent?"),
    describe=lambda deps, args: f"Reading the privacy ledger{' of ' + args.source if args.source else ''}.",
    router_cues=(
        r'\b(?:budget|ledger|spent|left)\b.{0,40}\b(?:privacy|epsilon|budget)\b|\bprivacy budget\b'
    ),
)
