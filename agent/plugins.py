"""Third-party tools: LangChain `BaseTool`s that packages declare in the `synthehr.tools` entry-point group.

An entry point names either a `BaseTool` instance or a function returning a list of them. Each is
wrapped as a ToolSpec (validated by its own args schema, no grounding roles) and added to the
registry after the built-in tools; a name that clashes with a built-in is refused with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from synthehr.tools.base import ToolInputError, ToolResult, ToolSpec
from synthehr.tools.registry import Registry, default_registry

GROUP = "synthehr.tools"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    entry_point: str
    distribution: str


def _args_model(tool: Any) -> type[BaseModel]:
    schema = getattr(tool, "args_schema", None)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema
    # A JSON-schema dict (or none): a permissive model; the tool validates its own input when invoked.
    fields = {name: (Any, None) for name in (schema or {}).get("properties", {})} if isinstance(schema, dict) else {}
    return create_model(f"{tool.name}_args", __config__=ConfigDict(extra="allow"), **fields)  # type: ignore[call-overload]


def spec_from_langchain_tool(tool: Any) -> ToolSpec:
    """A ToolSpec that runs a LangChain BaseTool (its observation is the tool's output as text)."""
    from langchain_core.tools import ToolException

    args_model = _args_model(tool)

    def run(deps: Any, args: BaseModel) -> ToolResult:
        payload = args.model_dump(exclude_unset=True) if args.model_config.get("extra") == "allow" else args.model_dump()
        try:
            out = tool.invoke(payload)
        except ToolException as exc:
            raise ToolInputError(str(exc)) from exc
        content = getattr(out, "content", out)
        return ToolResult(text=str(content), data={"plugin": tool.name})

    return ToolSpec(name=tool.name, description=tool.description or tool.name, args_model=args_model, func=run)


def discover(group: str = GROUP) -> list[tuple[PluginInfo, Any]]:
    """(where it came from, BaseTool) for every tool the installed entry points declare."""
    from langchain_core.tools import BaseTool

    found: list[tuple[PluginInfo, Any]] = []
    for ep in metadata.entry_points(group=group):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        try:
            obj = ep.load()
            tools = obj() if callable(obj) and not isinstance(obj, BaseTool) else obj
            tools = tools if isinstance(tools, (list, tuple)) else [tools]
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break synthehr
            log.warning("tool plugin %s (%s) could not be loaded: %s", ep.name, dist, exc)
            continue
        for tool in tools:
            if not isinstance(tool, BaseTool):
                log.warning("tool plugin %s (%s) gave %s, not a LangChain BaseTool; skipped", ep.name, dist, type(tool).__name__)
                continue
            found.append((PluginInfo(tool.name, f"{ep.name} = {ep.value}", dist), tool))
    return found


def registry_with_plugins(base: Registry | None = None, group: str = GROUP) -> tuple[Registry, list[PluginInfo]]:
    """The built-in registry plus every loadable third-party tool, and where each plugin came from."""
    registry = base if base is not None else default_registry()
    added: list[PluginInfo] = []
    for info, tool in discover(group):
        if tool.name in registry:
            log.warning("tool plugin %s (%s) is named like a registered tool; skipped", tool.name, info.distribution)
            continue
        registry.add(spec_from_langchain_tool(tool))
        added.append(info)
    return registry, added
