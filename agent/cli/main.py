"""The `synthehr` command. Heavy libraries are imported inside commands, so `--help` is instant.

Each feature adds its commands in its own module (`agent/cli/<feature>.py`, a `register(app)`
function) registered in `_load_feature_commands`. User errors print one clear line (no traceback) and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from synthehr import __version__
from synthehr.agent.cli import ask, budget, generate, knowledge, stats, tools_list, web
from synthehr.agent.cli.common import CTX, deps, print_json

app = typer.Typer(
    name="synthehr",
    help=(
        "Ask in plain language for differentially private synthetic patient records, with a data card, "
        "statistics and provenance.\n\n"
        'Example: synthehr ask "generate 2000 Type 2 diabetes patients EHR data with 20 important diabetes '
        'observations based on the US population"'
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sources_app = typer.Typer(help="The data-source catalog: list, show and register real data sources.", no_args_is_help=True)
app.add_typer(sources_app, name="sources")



def _version(value: bool) -> None:
    if value:
        typer.echo(f"synthehr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="User configuration file (YAML).", envvar="SYNTHEHR_CONFIG"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    CTX.config = config


# ---- sources --------------------------------------------------------------------------------------
@sources_app.command("list")
def sources_list(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """List the registered data sources."""
    d = deps()
    rows = []
    for schema in d.catalog.list():
        m = schema.meta
        rows.append({"name": m.name, "kind": "builtin" if d.catalog.is_builtin(m.name) else "user",
                     "title": m.title, "years": m.years, "columns": len(schema.columns)})
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "title", "years", "columns")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["title"], r["years"], str(r["columns"]))
    Console().print(table)


@sources_app.command("show")
def sources_show(name: str, as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """Show a source's provenance and harmonised column schema (never its rows)."""
    d = deps()
    info = d.catalog.describe(name)
    if as_json:
        print_json(info)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{info['title']}[/bold]  ({name}, {info['kind']})")
    for key in ("publisher", "url", "licence", "population", "years", "citation", "description"):
        if info.get(key):
            console.print(f"[dim]{key}:[/dim] {info[key]}")
    console.print(f"[dim]condition columns:[/dim] {', '.join(info['condition_columns']) or '-'}")
    table = Table("column", "type", "unit", "bounds / categories", "LOINC", "missing", title="Schema")
    for c in info["columns"]:
        bounds = ", ".join(c["categories"]) if c.get("categories") else (
            f"{c['lower']:g} - {c['upper']:g}" if c.get("lower") is not None else ("0 / 1" if c["type"] == "binary" else "")
        )
        table.add_row(c["name"], c["type"], c.get("unit") or "", bounds, c.get("loinc") or "", "yes" if c["missing_allowed"] else "no")
    console.print(table)


@sources_app.command("add")
def sources_add(
    path: Path = typer.Argument(..., help="CSV or Parquet file with one record per row."),
    meta: Path = typer.Option(..., "--meta", help="META.yaml: provenance and column schema (see README)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Register your own data source (validated first; nothing is half-registered on failure)."""
    d = deps()
    schema = d.catalog.register(path, meta)
    if as_json:
        print_json(d.catalog.describe(schema.name))
    else:
        typer.echo(f"registered '{schema.name}' with {len(schema.columns)} columns")


def _load_feature_commands() -> None:
    for module in (ask, web, knowledge, stats, generate, budget, tools_list):
        module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line on stderr (exit code 2)."""
    from synthehr.tools.base import ToolInputError
    from synthehr.configs.settings import ConfigError
    from synthehr.tools.store.workspace import BudgetExceeded

    _load_feature_commands()
    try:
        app(args=argv, standalone_mode=False)
    except (ToolInputError, ConfigError, BudgetExceeded) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
