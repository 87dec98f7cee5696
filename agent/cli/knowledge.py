"""Knowledge commands: `synthehr index`, `synthehr explain`, `synthehr eval retrieval`.

chromadb and sentence-transformers are imported only when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

DEFAULT_EVAL = Path(__file__).resolve().parents[2] / "tests" / "retrieval_eval.jsonl"


def _progress(quiet: bool) -> Any:
    from synthehr.tools.base import NullProgress, TqdmProgress

    return NullProgress() if quiet else TqdmProgress()


def index_cmd(
    rebuild: bool = typer.Option(False, "--rebuild", help="Drop the index (documents and data-set lineage) and build it from scratch."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Build or update the knowledge index (sources, guidelines, methods, data-set lineage).

    Incremental: only new or changed sections are embedded; removed documents are dropped.
    """
    from synthehr.agent.cli import common as cli
    from synthehr.tools.engines.knowledge_index import index_dataset

    d = cli.deps(progress=_progress(as_json))
    index = d.index
    stats = index.rebuild() if rebuild else index.build()
    # Lineage of every recorded data set not yet in the index (all of them after --rebuild).
    have = index.indexed_datasets()
    lineage = 0
    for row in d.workspace.query("SELECT id FROM datasets ORDER BY created_at"):
        if row["id"] not in have:
            lineage += index_dataset(d, row["id"])
    out = {**stats.to_dict(), "lineage_embedded": lineage, "total_chunks": index.count(),
           "where": str(d.workspace.chroma_dir) if d.settings.knowledge.chroma_mode == "persistent"
           else f"http://{d.settings.knowledge.chroma_host}:{d.settings.knowledge.chroma_port}"}
    if as_json:
        cli.print_json(out)
        return
    typer.echo(
        f"indexed {stats.documents} documents ({stats.chunks} sections): {stats.embedded} embedded, "
        f"{stats.unchanged} unchanged, {stats.deleted} removed; {lineage} data-set lineage chunks added; "
        f"{out['total_chunks']} chunks in {out['where']}"
    )
    for problem in stats.skipped:
        typer.echo(f"skipped: {problem}", err=True)


def explain_cmd(
    question: str = typer.Argument(..., help='The question, e.g. "which sources was the last cohort based on?"'),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="A data set id, or 'last' for the one just made."),
    k: Optional[int] = typer.Option(None, "--k", min=1, max=8, help="Knowledge passages to show (default: knowledge.top_k)."),
    session: str = typer.Option("default", "--session", help="Conversation session whose last data set 'last' means."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Answer a provenance question with cited passages (data-set lineage first)."""
    from synthehr.agent.cli import common as cli
    from synthehr.tools.provenance import SPEC

    d = cli.deps(session=session, progress=_progress(as_json))
    args: dict[str, Any] = {"question": question, "dataset": dataset}
    if k is not None:
        args["k"] = k
    result = SPEC.run(d, args)
    if as_json:
        cli.print_json({"text": result.text, **result.data})
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    data = result.data
    lin = data.get("lineage")
    if lin:
        src, model = lin["source"], lin["model"]
        console.print(f"[bold]Data set {escape(str(lin['dataset_id']))}[/bold]  ({escape(str(lin.get('created_at') or ''))})")
        console.print(f"  source: {escape(str(src.get('title') or src.get('name')))}  {escape(str(src.get('url') or ''))}")
        cond = lin["condition"]
        console.print(f"  condition: {escape(str(cond.get('name') or cond.get('id')))}; guidelines: {escape(', '.join(lin['guidelines']) or '-')}")
        console.print(f"  model: {escape(str(model.get('id')))}  epsilon={model.get('epsilon')} delta={model.get('delta')} "
                      f"accountant={model.get('accountant')} seed={lin.get('seed')} rows={lin.get('n_rows')}")
        console.print()
    if data.get("note"):
        console.print(f"[yellow]{escape(data['note'])}[/yellow]")
    if not data["passages"]:
        console.print(escape(result.text))
        return
    for p in data["passages"]:
        console.print(f"[bold cyan][{p['n']}][/bold cyan] " + escape(" ".join(p["sentences"])))
    console.print()
    console.print("[bold]Citations[/bold]")
    for c in data["citations"]:
        url = f"  [link={c['url']}]{escape(c['url'])}[/link]" if c["url"] else ""
        console.print(f"  [{c['n']}] {escape(c['title'])} — {escape(c['section'])}{url}")


def eval_retrieval_cmd(
    file: Path = typer.Option(DEFAULT_EVAL, "--file", help="JSON lines: {question, expected: [doc ids]}."),
    show: int = typer.Option(10, "--show", help="Misses to list (ranked lowest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Measure retrieval quality: recall@1, recall@3 and MRR of the expected documents."""
    from synthehr.agent.cli import common as cli
    from synthehr.tools.engines.knowledge_index import evaluate_retrieval, load_eval

    rows = load_eval(file)
    d = cli.deps(progress=_progress(as_json))
    report = evaluate_retrieval(d.index, rows)
    if as_json:
        cli.print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table("questions", "recall@1", "recall@3", "MRR", title=f"Retrieval ({file.name})")
    table.add_row(str(report["n"]), f"{report['recall@1']:.3f}", f"{report['recall@3']:.3f}", f"{report['mrr']:.3f}")
    console.print(table)
    misses = sorted((r for r in report["rows"] if r["rank"] != 1), key=lambda r: -(r["rank"] or 99))[:show]
    if misses:
        t = Table("question", "expected", "rank", "top 3", title="Not ranked first")
        for r in misses:
            t.add_row(r["question"], ", ".join(r["expected"]), str(r["rank"] or "-"), ", ".join(r["top3"]))
        console.print(t)
    if report["missing_documents"]:
        console.print(f"[yellow]expected documents not in the index (questions left out):[/yellow] {', '.join(report['missing_documents'])}")


def register(app: typer.Typer) -> None:
    app.command("index")(index_cmd)
    app.command("explain")(explain_cmd)
    # Share an `eval` group if another feature already added one.
    eval_app = next((g.typer_instance for g in app.registered_groups if g.name == "eval"), None)
    if eval_app is None:
        eval_app = typer.Typer(help="Measure quality: retrieval (and other evaluations).", no_args_is_help=True)
        app.add_typer(eval_app, name="eval")
    eval_app.command("retrieval")(eval_retrieval_cmd)
