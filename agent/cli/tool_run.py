"""`synthehr tools run NAME --arg value ... [--json]`: a command for every registered tool, made from its spec.

The options come from the tool's pydantic args model (types, choices from Literal/enum, help from the
Field descriptions, required flags), so a new tool, built-in or from a `synthehr.tools` entry point, has
its command without a CLI module. The call takes the agent's path: the argument limits, the args model,
then the same LangChain adapter (synthehr.agent.tooling) with its mapping of user errors; a failure the
user can fix is one line and exit 2 (synthehr.errors.user_message, in main()).
"""

from __future__ import annotations

import argparse
import enum
import json
import types
import typing
from collections.abc import Callable
from typing import Any, Optional

import typer

RESERVED = ("json", "session", "help")  # the command's own options; a tool field with such a name is renamed


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line user error instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        from synthehr.errors import ToolInputError

        raise ToolInputError(f"{message} (see `{self.prog} --help`)")


def _members(annotation: Any) -> list[Any]:
    """The members of a union annotation without None (`int | None` -> [int])."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _choices(annotation: Any) -> list[str] | None:
    members = _members(annotation)
    if len(members) != 1:
        return None
    a = members[0]
    if typing.get_origin(a) is typing.Literal:
        return [str(v) for v in typing.get_args(a)]
    if isinstance(a, type) and issubclass(a, enum.Enum):
        return [str(m.value) for m in a]
    return None


def _is_list(a: Any) -> bool:
    return typing.get_origin(a) in (list, tuple, set, frozenset) or a in (list, tuple, set)


def _json_or_text(token: str) -> Any:
    """A command-line token as a value: JSON where it parses (numbers, objects, lists), else the text itself."""
    try:
        return json.loads(token)
    except ValueError:
        return token


def option_name(field: str) -> str:
    name = field.replace("_", "-")
    return f"--{name}" if field not in RESERVED else f"--{name}-arg"


def build_parser(spec: Any, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser for `spec`'s args model; parsed values are left for the model to validate."""
    from pydantic_core import PydanticUndefined

    from synthehr.agent.tooling import describe_args

    prog = prog or f"synthehr tools run {spec.name}"
    described = {a["name"]: a for a in describe_args(spec.args_model)}
    parser = _Parser(prog=prog, description=" ".join(spec.description.split()), add_help=False,
                     epilog=("Example requests for the agent: " + "; ".join(f'"{e}"' for e in spec.examples[:2]))
                     if spec.examples else None)
    own = parser.add_argument_group("command options")
    own.add_argument("--help", "-h", action="help", help="Show this help and exit.")
    own.add_argument("--json", dest="_json", action="store_true", help="Print the typed result as JSON.")
    own.add_argument("--session", dest="_session", default="default", metavar="NAME",
                     help="Session whose state the tool reads and updates (e.g. the last data set).")
    group = parser.add_argument_group(f"arguments of {spec.name}")
    for field, info in spec.args_model.model_fields.items():
        d = described.get(info.alias or field) or described.get(field) or {}
        members = _members(info.annotation)
        names = [option_name(field)]
        if "_" in field and field not in RESERVED:
            names.append(f"--{field}")  # the field's own spelling works too
        bits = [d.get("description") or ""]
        if info.default is not PydanticUndefined and info.default is not None:
            bits.append(f"(default: {info.default})")
        kw: dict[str, Any] = {"dest": field, "default": argparse.SUPPRESS, "help": " ".join(b for b in bits if b)
                              .replace("%", "%%")}
        choices = _choices(info.annotation)
        if members == [bool]:
            kw["action"] = argparse.BooleanOptionalAction
        elif choices is not None:
            kw.update(choices=choices, metavar="{" + ",".join(choices) + "}")
        elif all(m is str for m in members):
            kw["metavar"] = "TEXT"
        elif any(_is_list(m) for m in members):
            # a list (or a list alternative): one or more values, repeatable; decoded in _value()
            kw.update(nargs="+", action="extend", metavar="ITEM")
        else:
            kw.update(metavar=(d.get("type") or "VALUE").upper().replace(" OR ", "|").replace(" ", "_"))
        if info.is_required():
            kw["required"] = True
        group.add_argument(*names, **kw)
    return parser


def parse_tool_args(spec: Any, argv: list[str]) -> tuple[dict[str, Any], bool, str]:
    """(the tool's raw arguments as given, --json, --session) from the command line."""
    ns = vars(build_parser(spec).parse_args(argv))
    as_json = bool(ns.pop("_json", False))
    session = str(ns.pop("_session", "default"))
    args = {}
    for field, info in spec.args_model.model_fields.items():
        if field in ns:
            args[info.alias or field] = _value(ns[field], info.annotation)
    return args, as_json, session


def _value(given: Any, annotation: Any) -> Any:
    """The value of an option as the args model expects it: text stays text where the field is text; otherwise
    JSON where a token parses (numbers, objects, lists); a single number for `int | list[str]` is the number."""
    members = _members(annotation)
    choices = _choices(annotation)
    if isinstance(given, bool) or given is None:
        return given
    if not isinstance(given, list):
        if all(m is str for m in members):
            return given
        if choices is not None and all(isinstance(v, str) for v in typing.get_args(members[0]) or [given]):
            return given
        return _json_or_text(given)
    lists = [m for m in members if _is_list(m)]
    if len(given) == 1:
        one = _json_or_text(given[0])
        if isinstance(one, list) or (not isinstance(one, str) and len(lists) < len(members)):
            return one
    items = typing.get_args(lists[0]) if lists else ()
    if items and all(m is str for m in _members(items[0])):
        return list(given)
    return [_json_or_text(t) for t in given]


def load_registry() -> Any:
    """The registry the agent uses: built-in tools plus `synthehr.tools` entry points."""
    from synthehr.agent.plugins import registry_with_plugins

    return registry_with_plugins()[0]


def call_tool(deps: Any, spec: Any, args: dict[str, Any],
              announce: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Any]:
    """Validate `args` as the agent does (limits, args model) and run the tool through the LangChain adapter.

    `announce` receives what the tool is about to do (its `describe` line), once the arguments are valid.
    Returns (the validated arguments, the ToolResult); a failure the user can fix raises ToolInputError."""
    import uuid

    from pydantic import ValidationError

    from synthehr.agent import grounding
    from synthehr.agent import session as session_mod
    from synthehr.agent.tooling import invoke_tool, to_langchain_tool, validation_message
    from synthehr.errors import ToolInputError

    try:
        grounding.check_args_limits(spec, args, deps.settings)
    except grounding.Decline as exc:
        raise ToolInputError(str(exc)) from None
    try:
        validated = spec.args_model.model_validate(args)
    except ValidationError as exc:
        raise ToolInputError(validation_message(spec, exc)) from None
    call_args = validated.model_dump(exclude_unset=True)
    if announce is not None:
        from synthehr.agent.loop import describe_call

        announce(describe_call(spec, deps, validated))
    before = deps.session.to_dict()
    content, result, ok = invoke_tool(to_langchain_tool(spec, deps), call_args, f"cli-{uuid.uuid4().hex[:8]}")
    if not ok or result is None:
        raise ToolInputError(content.removeprefix(f"Error from {spec.name}: "))
    session_mod.update_state(deps.session, spec.name, call_args, result, before)
    deps.save_session()
    return call_args, result


def result_json(spec: Any, args: dict[str, Any], result: Any) -> dict[str, Any]:
    typed = result.typed() if hasattr(result, "typed") else {}
    return json.loads(json.dumps({"tool": spec.name, "args": args, "text": result.text, "data": result.data,
                                  "files": [str(f) for f in result.files], **typed}, default=str))


def result_text(result: Any, root: Any = None) -> str:
    """The result for a person: the tool's text, then its figures, sources and files (paths relative to the workspace)."""
    from synthehr.agent.cli.ask import relative_text

    lines = [relative_text(result.text, root)]
    for st in getattr(result, "statements", None) or []:
        if st not in result.text:
            lines.append(st)
    for m in getattr(result, "missing", None) or []:
        lines.append(f"not included: {m.item} ({m.reason})")
    sources = getattr(result, "sources", None) or []
    if sources:
        lines.append("sources: " + "; ".join(s.title + (f" <{s.url}>" if s.url else "") for s in sources))
    if result.files:
        lines.append("files: " + ", ".join(relative_text(str(f), root) for f in result.files))
    return "\n".join(lines)


def overview(registry: Any) -> str:
    from synthehr.agent.tooling import describe_args

    lines = ["Usage: synthehr tools run NAME [--ARG VALUE ...] [--json] [--session NAME]", "",
             "Run one tool directly (options from its arguments; `synthehr tools run NAME --help` lists them):"]
    for spec in registry:
        args = " ".join(option_name(a["name"]) + ("" if a["required"] else "?") for a in describe_args(spec.args_model))
        lines.append(f"  {spec.name:<22} {args}")
    return "\n".join(lines)


def register(tools_app: typer.Typer) -> None:
    @tools_app.command("run", add_help_option=False,
                       context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def tools_run(ctx: typer.Context,
                  name: Optional[str] = typer.Argument(None, help="The tool (see `synthehr tools list`).")) -> None:
        """Run one tool directly: `synthehr tools run NAME --help` shows its options (made from its arguments)."""
        from synthehr.errors import ToolInputError

        registry = load_registry()
        if name is None or name.startswith("-"):
            typer.echo(overview(registry))
            return
        if name not in registry:
            raise ToolInputError(f"unknown tool '{name}'; valid tools: {', '.join(registry.names)}")
        spec = registry.get(name)
        args, as_json, session = parse_tool_args(spec, list(ctx.args))
        from synthehr.agent.cli.common import deps, print_json

        d = deps(session=session, progress=_progress(as_json))
        call_args, result = call_tool(d, spec, args, announce=None if as_json else lambda t: typer.echo(t, err=True))
        if as_json:
            print_json(result_json(spec, call_args, result))
        else:
            typer.echo(result_text(result, d.workspace.root))


def _progress(quiet: bool) -> Any:
    from synthehr.tools.base import TqdmProgress

    return TqdmProgress(disable=quiet)
