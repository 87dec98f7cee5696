"""`synthehr ask`, `synthehr chat` and `synthehr eval agent`: the agent on the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from synthehr.agent.cli.common import deps as build_cli_deps, print_json

SESSION_HELP = "Conversation name: follow-ups ('make them older', 'what is their mean HbA1c?') refer to its last cohort."
DEFAULT_CASES = Path(__file__).resolve().parents[2] / "tests" / "agent_cases.jsonl"


class RichProgress:
    """synthehr.tools.base.Progress on a Rich progress bar (training epochs, indexing)."""

    def __init__(self, console: Any):
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    def start(self, task: str, total: int | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.finish()
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=self.console,
                                  transient=True)
        self._progress.start()
        self._task = self._progress.add_task(task, total=total, info="")

    def update(self, advance: int = 1, **info: Any) -> None:
        if self._progress is None:
            return
        text = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self._progress.update(self._task, advance=advance, info=text)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _short(value: Any, limit: int = 240) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def relative_text(text: str, root: Any) -> str:
    """`text` with the workspace's absolute path removed (paths are shown relative to the workspace)."""
    if root is None:
        return text
    prefix = str(root).rstrip("/") + "/"
    return text.replace(prefix, "")


def event_printer(console: Any, root: Any = None, *, live: bool = False) -> Any:
    """An on_event callback that shows each step live: what the agent is doing, the tool call, its short
    result (paths relative to the workspace). With `live` (a terminal), the answer is printed as it is
    written: the writer's pieces as they come; a capable model's draft dimmed, then confirmed or replaced
    by the checked answer (said so). The callback's `streamed` is then true and the caller does not print
    the answer again; otherwise the answer is printed once, at the end."""
    from rich.markup import escape

    state = {"draft": ""}

    def write(text: str, style: str | None = None) -> None:
        console.print(relative_text(text, root), end="", style=style, markup=False, highlight=False, soft_wrap=True)

    def on_event(ev: Any) -> None:
        if ev.kind == "thought" and ev.text:
            console.print(f"[dim italic]{escape(_short(ev.text))}[/]")
        elif ev.kind == "action":
            console.print(f"[bold cyan]→ {escape(ev.tool or '')}[/] {escape(_short(ev.args or {}, 300))}")
        elif ev.kind == "observation":
            console.print(f"[green]  ← {escape(_short(relative_text(ev.text, root), 400))}[/]")
        elif ev.kind == "error":
            console.print(f"[yellow]  ! {escape(_short(relative_text(ev.text, root), 300))}[/]")
        elif not live:
            return
        elif ev.kind == "answer_delta":
            write(ev.text)
        elif ev.kind == "answer_draft":
            state["draft"] += ev.text
            write(ev.text, "dim")
        elif ev.kind == "answer_replace":
            draft, state["draft"] = state["draft"], ""
            kept = bool((ev.args or {}).get("kept"))
            if not ev.text:
                console.print("\n[dim](not the final answer yet: a planned step runs first)[/]")
            elif kept and ev.text.startswith(draft.strip()):
                write(ev.text[len(draft.strip()):])
            else:
                console.print("\n[yellow](checked against the tool results: the draft above is replaced by)[/]")
                write(ev.text)
        elif ev.kind == "answer":
            console.print()
            on_event.streamed = True  # type: ignore[attr-defined]

    on_event.streamed = False  # type: ignore[attr-defined]
    return on_event


def _backend(d: Any, console: Any) -> Any:
    from synthehr.agent.llm.factory import create_backend

    with console.status("Loading the language model…"):
        return create_backend(d.settings.llm)


def _router_opt(no_router: bool) -> Any:
    return None if no_router else "auto"


def _turn_json(result: Any) -> dict[str, Any]:
    return {
        "answer": result.answer,
        "steps": [{"tool": s.get("tool"), "args": s.get("args"), "observation": s.get("observation"),
                   "files": s.get("files") or [], "ok": s.get("ok", False),
                   **({"error": s["error"]} if s.get("error") else {})} for s in result.steps],
        "files": result.files,
        "declined": result.declined,
        "session": result.session,
        "parse_failures": result.parse_failures,
        "composed": result.composed,
        "answer_problems": list(getattr(result, "answer_problems", []) or []),
    }


def _print_answer(console: Any, result: Any, root: Any = None, printer: Any = None) -> None:
    """The answer as readable text in a panel (unless `printer` already streamed it); files it does not already
    name follow once, relative to the workspace (the answer writer names them, so usually nothing follows)."""
    from rich.panel import Panel
    from rich.text import Text

    from synthehr.agent.answer import relative_path

    title = "declined" if result.declined else "answer"
    answer = relative_text(result.answer, root)
    if getattr(printer, "streamed", False):
        if result.declined:
            console.print("[red](declined)[/]")
    else:
        console.print(Panel(Text(answer), title=title, border_style="red" if result.declined else "blue"))
    rel = list(dict.fromkeys(relative_path(f, root) for f in result.files))
    left = [f for f in rel if f not in answer]
    if left:
        console.print("[dim]files:[/] " + ", ".join(left))


def register(app: typer.Typer) -> None:
    @app.command("ask")
    def ask(
        text: str = typer.Argument(..., help="Your request in plain language."),
        session: str = typer.Option("default", "--session", "-s", help=SESSION_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print {steps: [{tool, args, observation}], answer, files}."),
        no_router: bool = typer.Option(False, "--no-router", help="Do not use the embedding router fallback."),
    ) -> None:
        """Ask once: the agent plans, calls tools (showing each step live) and answers.

        Example: synthehr ask "generate 2000 Type 2 diabetes patients EHR data with 20 important diabetes observations based on the US population"
        """
        from rich.console import Console

        from synthehr.agent.loop import run_turn
        from synthehr.errors import require_request

        require_request(text)  # before the language model is loaded
        console = Console(stderr=as_json)
        d = build_cli_deps(session=session, progress=RichProgress(console))
        llm = _backend(d, console)
        root = d.workspace.root
        printer = None if as_json else event_printer(console, root, live=console.is_terminal)
        result = run_turn(d, llm, text, on_event=printer, router=_router_opt(no_router))
        if as_json:
            print_json(_turn_json(result))
        else:
            _print_answer(console, result, root, printer)

    @app.command("chat")
    def chat(
        session: str = typer.Option("default", "--session", "-s", help=SESSION_HELP),
        no_router: bool = typer.Option(False, "--no-router", help="Do not use the embedding router fallback."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object per turn (for scripts)."),
    ) -> None:
        """Talk with the agent; the conversation keeps its history. Reads lines from stdin when piped.

        Type /reset to forget the conversation, /history to list it, /exit (or Ctrl-D) to leave.
        """
        from rich.console import Console

        from synthehr.agent import session as session_mod
        from synthehr.agent.loop import run_turn

        console = Console(stderr=as_json)
        d = build_cli_deps(session=session, progress=RichProgress(console))
        llm = _backend(d, console)
        interactive = sys.stdin.isatty()
        if interactive:
            console.print(f"[bold]synthehr chat[/] (session '{session}'). /exit to leave, /reset to start over.")
        while True:
            try:
                line = console.input("[bold green]you> [/]") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not interactive and line == "":
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/exit", "/quit", "exit", "quit"):
                break
            if line == "/reset":
                session_mod.reset(d)
                console.print("[dim]conversation reset[/]")
                continue
            if line == "/history":
                for t in session_mod.load(d).turns:
                    tools = ", ".join(s["tool"] for s in t.get("steps", []) if s.get("tool")) or "-"
                    console.print(f"[dim]{t.get('at', '')}[/] {t['user']}  [cyan]{tools}[/]")
                continue
            if not interactive and not as_json:
                console.print(f"[bold green]you>[/] {line}")
            printer = None if as_json else event_printer(console, d.workspace.root, live=console.is_terminal)
            result = run_turn(d, llm, line, on_event=printer, router=_router_opt(no_router))
            if as_json:
                typer.echo(json.dumps({"request": line, **_turn_json(result)}, default=str))
            else:
                _print_answer(console, result, d.workspace.root, printer)

    eval_app = _eval_group(app)

    @eval_app.command("agent")
    def eval_agent(
        cases: Path = typer.Option(DEFAULT_CASES, "--cases", help="JSONL file of cases (request, expected tools/args)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary and every case as JSON."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Run only the first N cases."),
        only: Optional[str] = typer.Option(None, "--only", help="Run only cases whose id or tags contain this text."),
        no_router: bool = typer.Option(False, "--no-router", help="Measure the LLM without the embedding router."),
        backend: Optional[str] = typer.Option(None, "--backend", help="Override llm.backend (embedded, transformers, llamacpp, openai)."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="Override llm.base_url (openai backend), e.g. http://127.0.0.1:8080/v1."),
        model: Optional[str] = typer.Option(None, "--model", help="Override llm.model."),
        grammar_param: Optional[str] = typer.Option(None, "--grammar-param", help="Override llm.grammar_param (grammar, structured_outputs.grammar, guided_grammar, auto)."),
        tool_calling: Optional[bool] = typer.Option(None, "--tool-calling/--no-tool-calling", help="Override llm.tool_calling (native tool calls)."),
        spec_cases: bool = typer.Option(False, "--spec-cases", help="Add the cases each registered tool's spec carries (its few-shot line and examples; tagged 'spec')."),
    ) -> None:
        """Measure the configured LLM's planning and answers: tool, argument and answer accuracy, parse failures, latency.

        Each case runs through the real agent loop with the configured backend, but the tools are recording stand-ins with the real names, descriptions and argument models: nothing is trained, sampled or written (a temporary workspace is used). The evaluation measures the LLM's planning, not the tools.
        """
        from rich.console import Console

        from synthehr.agent.evaluation import load_cases, run_eval, spec_cases as cases_of_specs
        from synthehr.agent.plugins import registry_with_plugins
        from synthehr.tools.base import ToolInputError

        if not cases.is_file():
            raise ToolInputError(f"cases file not found: {cases}")
        try:
            items = load_cases(cases)
        except ValueError as exc:
            raise ToolInputError(str(exc)) from None
        real = registry_with_plugins()[0]  # the tools the agent has, third-party ones included
        if spec_cases:
            items += cases_of_specs(real)
        if only:
            items = [c for c in items if only in c.id or any(only in t for t in c.tags)]
        if limit:
            items = items[:limit]
        console = Console(stderr=True)
        d = build_cli_deps()
        from synthehr.agent.llm.factory import with_overrides

        d.settings.llm = with_overrides(d.settings.llm, backend=backend, base_url=base_url, model=model,
                                        grammar_param=grammar_param, tool_calling=tool_calling)
        llm = _backend(d, console)
        done = [0]

        def on_case(r: Any) -> None:
            done[0] += 1
            mark = "[green]✓[/]" if r.tool_ok and r.args_ok is not False else "[red]✗[/]"
            console.print(f"{mark} {done[0]}/{len(items)} {r.id}: {', '.join(r.called_tools) or '-'} "
                          f"({r.latency_s:.1f}s)" + (f" [red]{r.error}[/]" if r.error else ""))

        report = run_eval(items, d.settings, llm, real, router=_router_opt(no_router), on_case=on_case)
        if as_json:
            print_json(report)
            return
        _print_report(Console(), report)


def _eval_group(app: typer.Typer) -> typer.Typer:
    """The `eval` command group (shared with other features: reuse it when it exists)."""
    for group in app.registered_groups:
        if group.name == "eval" and group.typer_instance is not None:
            return group.typer_instance
    eval_app = typer.Typer(help="Evaluate synthehr: the agent's planning and other quality checks.",
                           no_args_is_help=True)
    app.add_typer(eval_app, name="eval")
    return eval_app


def _print_report(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("case", "expected", "called", "tool", "args", "answer", "parse", "s", title="Agent evaluation")
    for c in report["cases"]:
        table.add_row(
            c["id"], ", ".join(c["expected_tools"]) or "(none)", ", ".join(c["called_tools"]) or "(none)",
            "✓" if c["tool_ok"] else "✗",
            "" if c["args_ok"] is None else ("✓" if c["args_ok"] else "✗ " + "; ".join(c["args_mismatch"])[:60]),
            "" if c.get("answer_score_ok") is None else ("✓" if c["answer_score_ok"] else
                                                        "✗ " + ", ".join(k for k, v in c["answer_checks"].items() if not v)),
            str(c["parse_failures"] or ""), f"{c['latency_s']:.1f}",
        )
    console.print(table)
    s = report["summary"]
    b = report["backend"]
    summary = Table("metric", "value", title=f"Summary — {b['name']} ({b['model_id']})")
    for key in ("cases", "tool_accuracy", "argument_accuracy", "answer_accuracy", "decline_accuracy", "answer_checks",
                "parse_failures",
                "cases_with_parse_failures", "errors", "median_latency_s"):
        v = s.get(key)
        summary.add_row(key, "-" if v is None else (f"{v:.1%}" if isinstance(v, float) and key.endswith(("accuracy", "checks")) else str(v)))
    console.print(summary)
