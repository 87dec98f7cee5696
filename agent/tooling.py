"""The one generic adapter from a synthehr ToolSpec (plain typed Python) to a LangChain tool.

Tool modules never import LangChain; the agent turns every registered ToolSpec into a
`StructuredTool` here. The LangChain tool validates its input against the spec's pydantic args
model and returns `(observation text, ToolResult)` as content and artifact, so the agent gets the
short observation for the model and the structured result (data, files) for the user.

Model-fixable errors (ToolInputError, an unknown condition, a privacy budget that would be
exceeded, invalid arguments) come back as an error ToolMessage whose content is the corrective
message; a bug raises.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from synthehr.tools.base import ToolInputError, ToolResult, ToolSpec

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.tools import StructuredTool

    from synthehr.tools.deps import Deps
    from synthehr.tools.registry import Registry


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a tool raises that the model (or the user) can fix: returned as observations."""
    errors: list[type[BaseException]] = [ToolInputError]
    try:
        from synthehr.tools.store.workspace import BudgetExceeded

        errors.append(BudgetExceeded)
    except ImportError:  # pragma: no cover
        pass
    try:
        from synthehr.tools.store.profiles import ProfileNotFound

        errors.append(ProfileNotFound)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def describe_args(args_model: type[BaseModel]) -> list[dict[str, Any]]:
    """The arguments of a tool as plain records (name, type, required, default, choices, description)."""
    schema = args_model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        out.append(
            {
                "name": name,
                "type": _type_name(prop, defs),
                "required": name in required,
                "default": prop.get("default"),
                "choices": _choices(prop, defs),
                "description": (prop.get("description") or "").strip(),
            }
        )
    return out


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return defs.get(ref.split("/")[-1], {})
    return prop


def _type_name(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    prop = _resolve(prop, defs)
    if "anyOf" in prop:
        names = [_type_name(p, defs) for p in prop["anyOf"]]
        names = [n for n in names if n != "null"]
        return " or ".join(dict.fromkeys(names)) or "null"
    if "enum" in prop:
        return "string"
    if "const" in prop:
        return json.dumps(prop["const"])
    t = prop.get("type")
    if t == "array":
        return f"list of {_type_name(prop.get('items', {}), defs)}"
    if t == "object":
        return "object"
    return str(t or "any")


def _choices(prop: dict[str, Any], defs: dict[str, Any]) -> list[Any] | None:
    prop = _resolve(prop, defs)
    if "enum" in prop:
        return list(prop["enum"])
    for sub in prop.get("anyOf", []):
        c = _choices(sub, defs)
        if c:
            return c
    if prop.get("type") == "array":
        return _choices(prop.get("items", {}), defs)
    return None


def args_help(spec: ToolSpec) -> str:
    """One line per argument, e.g. `n (integer, required): number of records`, for prompts and errors."""
    lines = []
    for a in describe_args(spec.args_model):
        bits = [a["type"], "required" if a["required"] else "optional"]
        if a["choices"]:
            bits.append("one of " + ", ".join(str(c) for c in a["choices"]))
        desc = f": {a['description']}" if a["description"] else ""
        lines.append(f"{a['name']} ({'; '.join(bits)}){desc}")
    return "\n".join(lines)


def validation_message(spec: ToolSpec, exc: ValidationError) -> str:
    """A short corrective message for invalid arguments: what was wrong and the valid keys/choices."""
    problems = []
    for err in exc.errors()[:4]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(arguments)"
        if err.get("type") == "extra_forbidden":
            problems.append(f"'{loc}' is not an argument of {spec.name}")
        elif err.get("type") == "missing":
            problems.append(f"'{loc}' is required")
        else:
            msg = str(err.get("msg", "invalid"))
            problems.append(f"'{loc}': {msg}")
    valid = ", ".join(a["name"] + ("*" if a["required"] else "") for a in describe_args(spec.args_model))
    return f"Invalid arguments for {spec.name}: " + "; ".join(problems) + f". Valid arguments (* = required): {valid}."


def to_langchain_tool(spec: ToolSpec, deps: "Deps") -> "StructuredTool":
    """Make `spec` a LangChain StructuredTool bound to `deps` (content: observation, artifact: ToolResult)."""
    from langchain_core.tools import StructuredTool, ToolException

    user_errors = _user_errors()

    def _run(**kwargs: Any) -> tuple[str, ToolResult]:
        try:
            result = spec.run(deps, kwargs)
        except user_errors as exc:
            raise ToolException(str(exc)) from exc
        except Exception as exc:  # the one mapping (synthehr.errors.user_message): fixable -> observation, bug -> raise
            from synthehr.errors import user_message

            message = user_message(exc)
            if message is None:
                raise
            raise ToolException(message) from exc
        if not isinstance(result, ToolResult):  # pragma: no cover - contract violation is a bug
            raise TypeError(f"tool {spec.name} returned {type(result).__name__}, not ToolResult")
        return result.text, result

    def _on_validation_error(exc: Any) -> str:
        if isinstance(exc, ValidationError):
            return validation_message(spec, exc)
        return f"Invalid arguments for {spec.name}: {exc}"

    return StructuredTool.from_function(
        func=_run,
        name=spec.name,
        description=spec.description,
        args_schema=spec.args_model,
        response_format="content_and_artifact",
        handle_tool_error=lambda exc: f"Error from {spec.name}: {exc}",
        handle_validation_error=_on_validation_error,
    )


def to_langchain_tools(registry: "Registry", deps: "Deps") -> dict[str, "StructuredTool"]:
    """Every registered tool as a LangChain tool, by name (registry order)."""
    return {spec.name: to_langchain_tool(spec, deps) for spec in registry}


def invoke_tool(tool: "StructuredTool", args: dict[str, Any], call_id: str, *,
                callbacks: Any = None) -> tuple[str, ToolResult | None, bool]:
    """Run a LangChain tool made by `to_langchain_tool`: (observation, ToolResult or None, ok).

    `callbacks` (a turn's child callback manager, or handlers) makes the call a child run of the turn's trace."""
    config = {"callbacks": callbacks} if callbacks is not None else None
    msg = tool.invoke({"name": tool.name, "args": args, "id": call_id, "type": "tool_call"}, config=config)
    content = msg.content if isinstance(msg.content, str) else json.dumps(msg.content, default=str)
    ok = getattr(msg, "status", "success") != "error"
    artifact = getattr(msg, "artifact", None)
    return content, artifact if isinstance(artifact, ToolResult) else None, ok


def openai_tool_schemas(registry: "Registry") -> list[dict[str, Any]]:
    """OpenAI-style `tools` entries (name, description, JSON schema of the args model) for native tool calling."""
    return [
        {"type": "function",
         "function": {"name": s.name, "description": " ".join(s.description.split()),
                      "parameters": s.args_model.model_json_schema()}}
        for s in registry
    ]
