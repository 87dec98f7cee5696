"""Conversation memory: the history of a named session and the tools' state, in the workspace.

A session is one row of the workspace's `sessions` table: `state_json` holds the tools' state
(synthehr.tools.base.SessionState: last_dataset, last_cohort, last_model, extra) and `history_json` the
turns (user text, steps, answer). `synthehr.agent.loop.run_turn` loads the history of `deps.session.name`,
uses `deps.session` as the live state, and saves both after every turn, so follow-ups such as
"make them older" or "what is their mean HbA1c?" refer to the right cohort across `chat` turns
and across `synthehr ask --session NAME` calls.

Public API (stable, used by the web page):
    load(deps, name=None) -> Session      # also sets deps.session to the loaded state
    save(deps, session) -> None
    reset(deps, name=None) -> Session     # forget history and state
    list_sessions(workspace) -> list[dict]
    Session.turns, Session.state, Session.context_text()
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synthehr.tools.base import SessionState, ToolResult

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.deps import Deps
    from synthehr.tools.store.workspace import Workspace

# Turns kept in the database (older ones are dropped); turns shown to the model.
MAX_HISTORY = 50
PROMPT_TURNS = 2


@dataclass
class Session:
    name: str
    state: SessionState
    turns: list[dict[str, Any]] = field(default_factory=list)

    def add_turn(self, user: str, steps: list[dict[str, Any]], answer: str, files: list[str], at: str) -> None:
        self.turns.append(
            {
                "user": user,
                "steps": [
                    {"tool": s.get("tool"), "args": s.get("args"), "observation": _short(s.get("observation") or "", 400),
                     "files": list(s.get("files") or []),
                     # The typed result (what the answer was written from), so a reopened conversation can show it.
                     **({"result": s["result"]} if s.get("result") else {})}
                    for s in steps
                    if s.get("tool")
                ],
                "answer": answer,
                "files": list(files),
                "at": at,
            }
        )
        del self.turns[:-MAX_HISTORY]

    def context_text(self) -> str:
        """The session context shown to the model, compactly (empty for a new session)."""
        return context_text(self.state, self.turns)


def context_text(state: SessionState, turns: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    cohort = describe_cohort(state.last_cohort)
    if state.last_dataset or cohort:
        ds = state.last_dataset or "(not saved)"
        lines.append(f"Last data set: {ds}" + (f" ({cohort})" if cohort else "") + ". Refer to it as \"last\".")
    if state.last_model:
        lines.append(f"Last trained model: {state.last_model}.")
    for turn in turns[-PROMPT_TURNS:]:
        tools = ", ".join(s["tool"] for s in turn.get("steps", []) if s.get("tool")) or "no tool"
        lines.append(f"Earlier request: \"{_short(turn.get('user', ''), 120)}\" -> {tools}.")
    return "\n".join(lines)


def describe_cohort(cohort: dict[str, Any] | None) -> str:
    """`condition=Type 2 diabetes, n=2000, observations=20, population=US, filters: ...` (non-empty values only)."""
    if not cohort:
        return ""
    parts = []
    for key, value in cohort.items():
        if key in {"dataset_id", "files", "dir"} or value in (None, "", [], {}):
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(",", ":"), default=str)
        parts.append(f"{key}={_short(str(value), 80)}")
    return ", ".join(parts[:8])


def update_state(state: SessionState, tool: str, args: dict[str, Any], result: ToolResult | None,
                 before: dict[str, Any]) -> None:
    """Update the session after a tool call, where the tool did not do it itself.

    A result whose data names a `dataset_id` becomes the last data set (and its arguments the last
    cohort); a `model_id` becomes the last model. Tools that set deps.session themselves win.
    """
    if result is None:
        return
    data = result.data or {}
    changed = state.to_dict() != before
    ds = data.get("dataset_id")
    if isinstance(ds, str) and ds and not changed:
        state.last_dataset = ds
        cohort = {k: v for k, v in args.items() if v not in (None, "", [], {})}
        if isinstance(data.get("cohort"), dict):
            cohort.setdefault("definition", data["cohort"])
        if isinstance(data.get("n_rows"), int):
            cohort.setdefault("n", data["n_rows"])
        cohort["dataset_id"] = ds
        state.last_cohort = cohort
    model = data.get("model_id")
    if isinstance(model, str) and model and state.last_model == before.get("last_model"):
        state.last_model = model
    # Whatever the tool set, keep the arguments that made the last cohort for follow-ups.
    if isinstance(ds, str) and ds:
        gen_args = {k: v for k, v in args.items() if v not in (None, "", [], {})}
        state.extra["last_generation"] = {"tool": tool, "args": gen_args, "dataset_id": ds}


def load(deps: "Deps", name: str | None = None) -> Session:
    """Load session `name` (default: deps.session.name) from the workspace and make it deps.session."""
    name = name or deps.session.name
    state_dict, turns = deps.workspace.load_session(name)
    state = SessionState.from_dict(name, state_dict)
    deps.session = state
    return Session(name=name, state=state, turns=list(turns))


def save(deps: "Deps", session: Session) -> None:
    """Persist the session's state and history (one transaction)."""
    deps.workspace.save_session(session.name, session.state.to_dict(), session.turns[-MAX_HISTORY:])


def reset(deps: "Deps", name: str | None = None) -> Session:
    name = name or deps.session.name
    session = Session(name=name, state=SessionState(name=name), turns=[])
    deps.session = session.state
    save(deps, session)
    return session


def list_sessions(workspace: "Workspace") -> list[dict[str, Any]]:
    rows = workspace.query("SELECT name, created_at, updated_at, history_json FROM sessions ORDER BY updated_at DESC")
    return [
        {"name": r["name"], "created_at": r["created_at"], "updated_at": r["updated_at"],
         "turns": len(json.loads(r["history_json"] or "[]"))}
        for r in rows
    ]


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
