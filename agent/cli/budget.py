"""`synthehr budget [SOURCE] [--json]`: each data source's privacy budget, spent, left and every charge."""

from __future__ import annotations

from typing import Optional

import typer


def budget_cmd(
    source: Optional[str] = typer.Argument(None, help="Data source name; leave out for every source."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """The privacy ledger: budget, spent and left per source, and every charge (run, mechanism, epsilon, delta, status).

    Charges are never refunded: a run that failed or was killed keeps its charge, because the budget is
    charged before any real record is read.
    """
    from synthehr.agent.cli import common as cli
    from synthehr.tools.privacy_budget import budget_report

    rows = budget_report(cli.deps(), source)
    if as_json:
        cli.print_json({"sources": rows})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for r in rows:
        console.print(f"[bold]{r['source']}[/bold]: epsilon spent {r['spent_epsilon']:.4g} of {r['budget_epsilon']:g}, "
                      f"left {r['left_epsilon']:.4g}; delta spent {r['spent_delta']:.3g} of {r['budget_delta']:.3g}, "
                      f"left {r['left_delta']:.3g}; {len(r['charges'])} charge(s)")
        if not r["charges"]:
            continue
        t = Table("time", "run", "mechanism", "epsilon", "delta", "status")
        for c in r["charges"]:
            status = c["status"] + (" (charge stays spent)" if c["status"] == "failed" else "")
            t.add_row(c["at"], c["run_id"] or (c["ref"] or "-"), c["mechanism"], f"{c['epsilon']:.4g}",
                      f"{c['delta']:.3g}", status)
        console.print(t)
        if r["failed_run_charges"]:
            console.print(f"[yellow]{r['failed_run_charges']} charge(s) belong to failed runs: a failed run's "
                          "charge stays spent.[/yellow]")
    console.print("[dim]Charges are never refunded: the budget is charged before any real record is read.[/dim]")


def register(app: typer.Typer) -> None:
    app.command("budget")(budget_cmd)
