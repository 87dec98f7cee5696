"""Statistics commands: `synthehr stats DATASET` and `synthehr report MODEL_OR_DATASET`.

pandas, scikit-learn and matplotlib are imported only when a command runs.
"""

from __future__ import annotations

from typing import Any, Optional

import typer


def _n(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def stats_cmd(
    dataset: str = typer.Argument("last", help="Synthetic data set id, or 'last' (the one generated most recently)."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated observations (default: the condition's key observations)."),
    by: Optional[str] = typer.Option(None, "--by", help="Group by a column: sex, age_band (18-44/45-64/65+), race_ethnicity, ..."),
    by2: Optional[str] = typer.Option(None, "--by2", help="A second grouping column (e.g. --by sex --by2 age_band)."),
    threshold: list[str] = typer.Option([], "--threshold", "-t", help="Share meeting a cut point, e.g. 'hba1c_pct>=9' or 'bp>=130/80' (repeatable)."),
    plot: list[str] = typer.Option([], "--plot", help="PNG plot: an observation, 'heatmap', 'grouped' or 'scatter' (repeatable)."),
    corr: Optional[str] = typer.Option(None, "--corr", help="Correlate two observations: 'bmi_kg_m2,hba1c_pct'."),
    session: str = typer.Option("default", "--session", help="Conversation session whose last data set 'last' means."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Statistics of a synthetic data set: mean/SD/median/IQR, proportions, threshold shares, groups, correlation, plots.

    Real data sources are never summarised. Example: synthehr stats last --by sex --by2 age_band --plot hba1c_pct
    """
    from synthehr.agent.cli import common as cli
    from synthehr.tools.cohort_stats import CohortStatsArgs, cohort_stats

    args = CohortStatsArgs(
        dataset=dataset,
        columns=columns,
        by=[b for b in (by, by2) if b] or None,
        thresholds=list(threshold) or None,
        plot=list(plot) or None,
        correlation=corr,
    )
    result = cohort_stats(cli.deps(session=session), args)
    if as_json:
        cli.print_json({"text": result.text, **result.data, "files": result.files})
        return
    _print_stats(result)


def _print_stats(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    d = result.data
    console = Console()
    console.print(f"[bold]Data set {d['dataset_id']}[/bold]: {d['n_rows']} synthetic records"
                  + (f", condition {d['condition']}" if d.get("condition") else "")
                  + (f", source {d['source']}" if d.get("source") else ""))
    numeric = {k: v for k, v in d["columns"].items() if v["kind"] == "numeric"}
    if numeric:
        t = Table("observation", "unit", "n", "missing", "mean", "SD", "median", "IQR", "min", "max", title="Numeric observations")
        for name, s in numeric.items():
            t.add_row(name, s.get("unit") or "", str(s["n"]), str(s["missing"]), _n(s["mean"]), _n(s["sd"]), _n(s["median"]),
                      f"{_n(s['q1'])} - {_n(s['q3'])}", _n(s["min"]), _n(s["max"]))
        console.print(t)
    other = {k: v for k, v in d["columns"].items() if v["kind"] != "numeric"}
    if other:
        t = Table("observation", "value", "count", "share", "missing", title="Categories and yes/no observations")
        for name, s in other.items():
            if s["kind"] == "binary":
                t.add_row(name, "yes (1)", str(s["count_1"]), _pct(s["proportion_1"]), str(s["missing"]))
            else:
                for i, (cat, cnt) in enumerate(s["counts"].items()):
                    t.add_row(name if i == 0 else "", cat, str(cnt), _pct(s["proportions"][cat]), str(s["missing"]) if i == 0 else "")
        console.print(t)
    if d["thresholds"]:
        t = Table("threshold", "meaning", "guideline", "patients", "of", "share", title="Guideline thresholds")
        for s in d["thresholds"]:
            t.add_row(s["threshold"], s.get("label") or "", s.get("guideline") or "", str(s["count"]), str(s["n"]), _pct(s["share"]))
        console.print(t)
    if d.get("groups"):
        by = d["groups"]["by"]
        cols = [c for c, v in d["columns"].items() if c not in by][:6]
        t = Table(*by, "n", *[f"{c} ({'mean' if d['columns'][c]['kind'] == 'numeric' else '% yes' if d['columns'][c]['kind'] == 'binary' else 'top'})" for c in cols],
                  title=f"By {' and '.join(by)}")
        for g in d["groups"]["groups"]:
            cells = []
            for c in cols:
                s = g["stats"][c]
                if s["kind"] == "numeric":
                    cells.append(f"{_n(s['mean'])} ({_n(s['sd'])})")
                elif s["kind"] == "binary":
                    cells.append(_pct(s["proportion_1"]))
                else:
                    top = max(s["proportions"].items(), key=lambda kv: kv[1] or 0) if s["proportions"] else ("-", None)
                    cells.append(f"{top[0]} {_pct(top[1])}")
            t.add_row(*[str(g["group"][b]) for b in by], str(g["n"]), *cells)
        console.print(t)
    if d.get("correlation"):
        c = d["correlation"]
        console.print(f"Correlation {c['x']} ~ {c['y']} (n={c['n']}): Pearson r = {_n(c['pearson'], 3)} (p = {_n(c['pearson_p'], 4)}), "
                      f"Spearman rho = {_n(c['spearman'], 3)} (p = {_n(c['spearman_p'], 4)})")
    missing = {k: v for k, v in d["missing"].items() if v}
    if missing:
        console.print("[dim]missing values:[/dim] " + ", ".join(f"{k} {v}" for k, v in missing.items()))
    for f in result.files:
        console.print(f"plot: {f}")


def report_cmd(
    ref: str = typer.Argument("last", help="Model id, data set id (the report of its model) or 'last'."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build the report again (needs the model's recorded holdout split)."),
    session: str = typer.Option("default", "--session", help="Conversation session whose last data set 'last' means."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Custodian report of a trained model: fidelity, utility (TSTR/TRTR), privacy attacks and clinical validity.

    Shows models/<id>/quality.md (building it when missing). Aggregates only, but computed on real records
    WITHOUT differential privacy: for the data custodian, not for sharing. Refused unless
    privacy.custodian_reports allows it for the model's source (default: built-in public sources only).
    """
    from synthehr.agent.cli import common as cli
    from synthehr.tools.engines.quality import report_for

    out = report_for(cli.deps(session=session), ref, rebuild=rebuild)
    if as_json:
        cli.print_json(out)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rep = out["report"]
    s = rep["summary"]
    console.print(f"[bold]Custodian report of model {out['model_id']}[/bold]" + (f" (data set {out['dataset_id']})" if out["dataset_id"] else "")
                  + (" - built now" if out["built"] else ""))
    console.print(f"[bold red]This report {out['warning']}.[/bold red]")
    t = Table("area", "metric", "value", "ideal")
    rows = [
        ("privacy", "epsilon / delta (accountant)", f"{_n(s['epsilon'], 3)} / {s['delta'] if s['delta'] is not None else '-'} ({s['accountant'] or '-'})", "small"),
        ("fidelity", "marginal score (KS / TVD complement)", _n(s["marginal_score"], 3), "1"),
        ("fidelity", "correlation difference (mean abs)", _n(s["correlation_mean_abs_diff"], 3), "0"),
        ("fidelity", "detection AUC (real vs synthetic)", _n(s["detection_auc"], 3), "0.5"),
        ("utility", "TSTR / TRTR AUROC, gradient boosting", f"{_n(s['tstr_auroc_gb'], 3)} / {_n(s['trtr_auroc_gb'], 3)}", "equal"),
        ("utility", "TSTR / TRTR AUROC, logistic regression", f"{_n(s['tstr_auroc_lr'], 3)} / {_n(s['trtr_auroc_lr'], 3)}", "equal"),
        ("privacy", "exact copies of training records", _pct(s["exact_copy_rate"]), "0%"),
        ("privacy", "synthetic closer to train than holdout", _pct(s["dcr_share_closer_to_train"]), "50%"),
        ("privacy", "membership-inference AUC", _n(s["mia_auc"], 3), "0.5"),
        ("clinical", "values inside public bounds", _pct(s["share_in_bounds"]), "100%"),
        ("clinical", "cohort-definition hit rate", _pct(s["cohort_hit_rate"]), ""),
    ]
    for r in rows:
        t.add_row(*r)
    console.print(t)
    for f in rep.get("flags", []):
        console.print(f"[yellow]flag:[/yellow] {f}")
    if not rep.get("flags"):
        console.print("no flags")
    console.print(f"report: {out['dir']}/quality.md")
    for f in out["files"]:
        if f.endswith(".png"):
            console.print(f"plot: {f}")


def register(app: typer.Typer) -> None:
    app.command("stats")(stats_cmd)
    app.command("report")(report_cmd)
