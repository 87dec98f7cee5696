"""What every tool shares: its result type, the spec the registry lists and the session state tools read
and update. The corrective error (`ToolInputError`) and the progress reporters live lower down
(`synthehr.errors`, `synthehr.progress`) and are re-exported here for tool modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from synthehr.errors import ToolInputError
from synthehr.progress import NullProgress, Progress, TqdmProgress

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.deps import Deps


@dataclass
class ToolResult:
    """A tool's answer: `text` is the short observation for the LLM (never rows of data),
    `data` the structured result for --json and the web page, `files` the paths written."""

    text: str
    data: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ToolSpec:
    """A tool the agent may call: a plain function over validated arguments."""

    name: str
    description: str
    args_model: type[BaseModel]
    func: Callable[["Deps", Any], ToolResult]
    # Short example requests that call this tool (used in prompts and by the router).
    examples: tuple[str, ...] = ()

    def run(self, deps: "Deps", args: dict[str, Any] | BaseModel) -> ToolResult:
        model = args if isinstance(args, self.args_model) else self.args_model.model_validate(args)
        return self.func(deps, model)


@dataclass
class SessionState:
    """What a conversation remembers between turns (persisted in the workspace's sessions table)."""

    name: str = "default"
    last_dataset: str | None = None
    last_cohort: dict[str, Any] | None = None
    last_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_dataset": self.last_dataset,
            "last_cohort": self.last_cohort,
            "last_model": self.last_model,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "SessionState":
        return cls(
            name=name,
            last_dataset=data.get("last_dataset"),
            last_cohort=data.get("last_cohort"),
            last_model=data.get("last_model"),
            extra=dict(data.get("extra") or {}),
        )


__all__ = ["NullProgress", "Progress", "SessionState", "ToolInputError", "ToolResult", "ToolSpec", "TqdmProgress"]
