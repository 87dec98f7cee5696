"""What every tool shares: its result type, the corrective error, the spec the registry lists,
the session state tools read and update, and the progress reporter long work writes to."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:  # pragma: no cover
    from tools.deps import Deps


class ToolInputError(ValueError):
    """The caller (usually the LLM) can fix this: the message says what was wrong and lists the valid choices.

    The agent returns it to the model as a corrective observation; the CLI prints it as one line.
    It must never contain a row of real data.
    """


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


class Progress(Protocol):
    """Progress of long work (training, indexing). Implementations: tqdm (default), Rich, the web page."""

    def start(self, task: str, total: int | None = None) -> None: ...

    def update(self, advance: int = 1, **info: Any) -> None: ...

    def finish(self) -> None: ...


class TqdmProgress:
    """A tqdm bar on stderr."""

    def __init__(self, disable: bool = False):
        self._bar: Any = None
        self._disable = disable

    def start(self, task: str, total: int | None = None) -> None:
        from tqdm.auto import tqdm

        self.finish()
        self._bar = tqdm(total=total, desc=task, file=sys.stderr, disable=self._disable, leave=False)

    def update(self, advance: int = 1, **info: Any) -> None:
        if self._bar is None:
            return
        if info:
            self._bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in info.items()}, refresh=False)
        self._bar.update(advance)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class NullProgress:
    def start(self, task: str, total: int | None = None) -> None:
        pass

    def update(self, advance: int = 1, **info: Any) -> None:
        pass

    def finish(self) -> None:
        pass
