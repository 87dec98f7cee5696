"""privacy_budget: how much of each data source's privacy budget has been spent, and on what.

`budget_report` is the one reading of the ledger that the tool, `synthehr budget` and the data card
share: per source the budget, spent and left (basic sequential composition of every charge), and
every charge with the run that made it. A charge is never refunded: once a run's mechanism could see
the records its budget is spent, so a run that failed (or was killed) keeps its charge.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synthehr.tools.base import ToolResult, ToolSpec
from synthehr.tools.deps import Deps

FAILED_NOTE = "a failed run's charge stays spent (the budget is charged before any record is read and never refunded)"


class PrivacyBudgetArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        None, json_schema_extra={"role": "source"}, description="Data source name, e.g. nhanes-2017-2018. Leave empty for every registered source."
    )


def budget_report(deps: Deps, source: str | None = None) -> list[dict[str, Any]]:
    """Per source: budget, spent, left and every charge (run id, mechanism, epsilon, delta, status, time).

    `source` None lists every registered source plus any source the ledger names that is no longer
    registered. An unknown `source` raises ToolInputError listing the registered ones.
    """
    ws = deps.workspace
    if source:
        if source not in {r["source"] for r in ws.query("SELECT DISTINCT source FROM ledger")}:
            deps.catalog.get(source)  # corrective error listing valid sources
        names = [source]
    else:
        names = list(deps.catalog.names())
        names += sorted({r["source"] for r in ws.query("SELECT DISTINCT source FROM ledger")} - set(names))
    p = deps.settings.privacy
    out = []
    for name in names:
        eps, delta = ws.spent(name)
        charges = []
        for row in ws.ledger(name):
            status = row["status"] or "no run recorded"
            charges.append({
                "source": name, "at": row["at"], "run_id": row["run_id"], "ref": row["ref"], "mechanism": row["mechanism"],
                "epsilon": float(row["epsilon"]), "delta": float(row["delta"]), "status": status,
                "what": row["what"],
                **({"note": "charge stays spent"} if status == "failed" else {}),
            })
        n_failed = sum(1 for c in charges if c["status"] == "failed")
        out.append({
            "source": name,
            "budget_epsilon": p.source_budget_epsilon,
            "budget_delta": p.source_budget_delta,
            "spent_epsilon": eps,
            "spent_delta": delta,
            "left_epsilon": max(p.source_budget_epsilon - eps, 0.0),
            "left_delta": max(p.source_budget_delta - delta, 0.0),
            "failed_run_charges": n_failed,
            "note": FAILED_NOTE,
            "charges": charges,
        })
    return out


def privacy_budget(deps: Deps, args: PrivacyBudgetArgs) -> ToolResult:
    rows = budget_report(deps, args.source)
    lines = []
    for r in rows:
        failed = (f" {r['failed_run_charges']} charge(s) belong to failed runs and stay spent."
                  if r["failed_run_charges"] else "")
        lines.append(
            f"{r['source']}: spent epsilon {r['spent_epsilon']:.3g} of {r['budget_epsilon']:g} "
            f"(left {r['left_epsilon']:.3g}), delta {r['spent_delta']:.2g} of {r['budget_delta']:.2g}, "
            f"in {len(r['charges'])} charge(s).{failed}"
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
