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
class Figure:
    """A number a tool reported, in clinical words ("mean HbA1c", 7.1, "%"); `reference` is the same figure
    of the source where one is known (e.g. the source's DP-released value) and `reference_label` says what it is."""

    label: str
    value: float
    unit: str = ""
    reference: float | None = None
    reference_label: str = ""


@dataclass
class Missing:
    """Something the user asked for that the result does not contain, and why (not a failure)."""

    item: str
    reason: str


@dataclass
class SourceRef:
    """A document the result rests on (a data source, a guideline, a retrieved passage)."""

    title: str
    url: str = ""
    section: str = ""
    n: int | None = None  # citation number, where the result cites as [n]
    quotes: list[str] = field(default_factory=list)  # retrieved sentences the answer may use verbatim


@dataclass
class ToolResult:
    """A tool's answer.

    `text` is the short observation for the LLM (never rows of data), `data` the structured result for --json
    and the web page, `files` the paths written (plots included). The typed fields are what the answer writer
    (synthehr.agent.answer) reads: `summary` says what the tool did in one plain sentence, `statements` are
    further plain sentences it may repeat (a cohort definition, a privacy guarantee), `figures` the numbers,
    `plots` the image files among `files`, `sources` the documents, `missing` what was asked for but is not
    there and why. A tool fills what applies; the writer says nothing a field does not hold.
    """

    text: str
    data: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    summary: str = ""
    statements: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    sources: list[SourceRef] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    privacy: str = ""

    def typed(self) -> dict[str, Any]:
        """The typed fields as JSON-safe data (kept in a turn's steps and the session history)."""
        from dataclasses import asdict

        return {"summary": self.summary, "statements": list(self.statements),
                "figures": [asdict(f) for f in self.figures], "plots": list(self.plots),
                "sources": [asdict(s) for s in self.sources], "missing": [asdict(m) for m in self.missing],
                "privacy": self.privacy}


def arg_role(info: Any) -> str | None:
    """The grounding role an args-model field declares (`Field(json_schema_extra={"role": "n"})`), or None."""
    extra = getattr(info, "json_schema_extra", None)
    if isinstance(extra, dict):
        role = extra.get("role")
        return str(role) if role else None
    return None


def arg_roles(model: type[BaseModel]) -> dict[str, str]:
    """{field name: role} of the fields of `model` that declare a role."""
    return {name: r for name, info in model.model_fields.items() if (r := arg_role(info))}


@dataclass(frozen=True)
class ToolSpec:
    """A tool the agent may call: a plain function over validated arguments."""

    name: str
    description: str
    args_model: type[BaseModel]
    func: Callable[["Deps", Any], ToolResult]
    # Short example requests that call this tool (used in prompts and by the router).
    examples: tuple[str, ...] = ()
    # More phrasings for the router and the intent model only (not shown in the prompt).
    router_examples: tuple[str, ...] = ()
    # Lexical cues (a regex) that add to the router's score of this tool, and cues a request must show for it
    # (without one the score is lowered): short texts embed noisily.
    router_cues: str = ""
    router_requires: str = ""
    # One few-shot conversation for the prompt: {"request", "context"?, "thought", "args", "observation", "final"}.
    few_shot: dict[str, Any] | None = None
    # What the agent says it is doing before the call, in the clinician's words (a thought), from the
    # validated arguments; None: a generic line from the description.
    describe: Callable[["Deps", Any], str] | None = None

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


__all__ = ["Figure", "Missing", "NullProgress", "Progress", "SessionState", "SourceRef", "ToolInputError", "ToolResult",
           "ToolSpec", "TqdmProgress", "arg_role", "arg_roles"]
