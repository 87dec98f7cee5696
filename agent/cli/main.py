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
from synthehr.agent.cli import ask, budget, doctor, generate, knowledge, stats, tools_list, web
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
    debug: bool = typer.Option(False, "--debug", help="On an internal error, show the full traceback.", envvar="SYNTHEHR_DEBUG"),
) -> None:
    CTX.config = config
    CTX.debug = debug


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


_FEATURES_LOADED: list[bool] = []


def _load_feature_commands() -> None:
    if _FEATURES_LOADED:  # main() may run many times in one process (tests): register once
        return
    for module in (ask, web, knowledge, stats, generate, budget, doctor, tools_list):
        module.register(app)
    _FEATURES_LOADED.append(True)


def _debug_requested(argv: list[str] | None) -> bool:
    import os

    args = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in args or CTX.debug:
        return True
    return os.environ.get("SYNTHEHR_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place that turns a failure into what the user sees.

    A failure the user can fix (synthehr.errors.user_message: synthehr errors, validation and usage
    errors of either click copy, non-UTF-8 files, a damaged database, missing files) prints ONE line on
    stderr and exits 2. A bug exits 1 with one line; its traceback only with --debug (or SYNTHEHR_DEBUG=1).
    """
    from synthehr.errors import user_message

    CTX.debug = False
    _load_feature_commands()
    try:
        code = app(args=argv, standalone_mode=False)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except BaseException as exc:  # noqa: BLE001 - the one mapping point
        code = _exit_code_of(exc)
        if code:
            sys.exit(code)
        if code == 0:
            return
        if isinstance(exc, SystemExit):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
            typer.echo(exc.ctx.get_help())  # `synthehr` alone (or a group alone) shows its help
            return
        message = user_message(exc)
        if message is not None:
            typer.echo(f"error: {message}", err=True)
            sys.exit(2)
        if _debug_requested(argv):
            raise
        typer.echo(f"internal error ({type(exc).__name__}); this is a bug. Rerun with --debug for the traceback.",
                   err=True)
        sys.exit(1)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _exit_code_of(exc: BaseException) -> int | None:
    """Exit and Abort of either click copy (typer bundles its own): their exit code, else None."""
    for mod_name in ("click.exceptions", "typer._click.exceptions"):
        mod = sys.modules.get(mod_name)
        if mod is None:
            continue
        if isinstance(exc, getattr(mod, "Exit", ())):
            return int(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, getattr(mod, "Abort", ())):
            typer.echo("aborted", err=True)
            return 130
    if isinstance(exc, (typer.Exit,)):
        return int(getattr(exc, "exit_code", 0) or 0)
    return None


if __name__ == "__main__":  # pragma: no cover
    main()
