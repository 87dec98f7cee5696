"""The prompt budget: every step's prompt fits the model's context window.

LLaMA-2 reads 4,096 tokens. The agent's prompt is the system prompt (with the tool list), the
few-shot conversations, the request and the steps so far (with native tool calling also the tools'
JSON schemas), plus the reply it may write (llm.max_new_tokens). Before each step the agent
measures the prompt with the backend's own count (``count_tokens``: the tokenizer for llama.cpp and
transformers; for a server the characters over the characters-per-token its usage reports showed)
against the backend's ``context_window`` (the server's model info or llm.n_ctx) and, only while it
is too long, shortens it in this order:

1. older observations of this turn capped at 300 characters;
2. few-shot conversations dropped, the last first (the first one, a cohort request, goes last);
3. the oldest steps of this turn dropped (the latest step and its observation are kept);
4. the latest observation capped at 400, then 200 characters;
5. the conversation context of the request capped at 300 characters.

A prompt that still does not fit (the system prompt alone is too long) is a ConfigError that names
both numbers. ``compact_tools`` shrinks native tool schemas (no titles, no null branches, short
descriptions): the six tools' 9.3k characters of JSON become 6.2k.

Backends without ``context_window`` / ``count_tokens`` (the scripted fake) are left alone.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from synthehr.agent.llm.common import LLMUnavailable

Message = dict[str, str]

MARGIN = 32  # tokens kept free besides the reply: template tokens the count may miss
HISTORY_OBS_CHARS = 300
LAST_OBS_CHARS = (400, 200)
CONTEXT_CHARS = 300


@dataclass
class BudgetReport:
    """What the budget measured and did for one step (kept on the backend as `last_budget`)."""

    window: int
    limit: int
    before: int
    after: int
    actions: list[str] = field(default_factory=list)


def _is_obs(m: Message) -> bool:
    return m["role"] == "user" and m["content"].startswith("Observation:")


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _count(backend: Any, messages: list[Message], tools: list[dict[str, Any]] | None) -> int:
    if tools:
        try:
            return int(backend.count_tokens(messages, tools=tools))
        except TypeError:  # a local backend: the server-side tool text does not exist there
            pass
    return int(backend.count_tokens(messages))


def _layout(messages: list[Message]) -> tuple[int, int]:
    """(start of the few-shot conversations, index of the real request)."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    req = max((i for i, m in enumerate(messages) if m["role"] == "user" and not _is_obs(m)), default=start)
    return start, req


def fit_messages(
    backend: Any,
    messages: list[Message],
    *,
    max_new_tokens: int,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[list[Message], BudgetReport | None]:
    """`messages` shortened (a copy) until prompt + reply fit the backend's context window."""
    window = getattr(backend, "context_window", None)
    if not isinstance(window, int) or window <= 0 or not hasattr(backend, "count_tokens"):
        return messages, None
    limit = window - max_new_tokens - MARGIN
    msgs = [dict(m) for m in messages]
    before = now = _count(backend, msgs, tools)
    report = BudgetReport(window=window, limit=limit, before=before, after=before)
    if now <= limit:
        backend.last_budget = report
        return msgs, report

    def measure(action: str) -> bool:
        nonlocal now
        now = _count(backend, msgs, tools)
        report.actions.append(action)
        return now <= limit

    start, req = _layout(msgs)
    # 1. older observations of this turn
    obs = [i for i in range(req + 1, len(msgs)) if _is_obs(msgs[i])]
    for i in obs[:-1]:
        msgs[i]["content"] = _cap(msgs[i]["content"], HISTORY_OBS_CHARS)
    if obs[:-1] and measure("capped older observations"):
        return _done(backend, msgs, report, now)
    # 2. few-shot conversations, the last first
    while req > start:
        starts = [i for i in range(start, req) if msgs[i]["role"] == "user" and not _is_obs(msgs[i])]
        if not starts:
            break
        cut = starts[-1]
        del msgs[cut:req]
        req = cut
        if measure("dropped a few-shot example"):
            return _done(backend, msgs, report, now)
    # 3. the oldest steps of this turn (assistant step + its observation), the latest kept
    while len(msgs) - (req + 1) > 2:
        del msgs[req + 1: req + 3]
        if measure("dropped the oldest step"):
            return _done(backend, msgs, report, now)
    # 4. the latest observation
    if len(msgs) > req + 1 and _is_obs(msgs[-1]):
        for n in LAST_OBS_CHARS:
            msgs[-1]["content"] = _cap(msgs[-1]["content"], n)
            if measure(f"capped the latest observation at {n} characters"):
                return _done(backend, msgs, report, now)
    # 5. the request's conversation context
    content = msgs[req]["content"]
    m = re.match(r"(?s)Conversation so far:\n(.*?)\n\n(Request: .*)$", content)
    if m:
        msgs[req]["content"] = f"Conversation so far:\n{_cap(m.group(1), CONTEXT_CHARS)}\n\n{m.group(2)}"
        if measure("capped the conversation context"):
            return _done(backend, msgs, report, now)
    raise LLMUnavailable(
        f"the prompt needs {now} tokens plus {max_new_tokens} for the reply, but the model's context holds {window}: "
        "use a model or server with a larger context (llama.cpp server --n_ctx 4096) or lower llm.max_new_tokens"
    )


def _done(backend: Any, msgs: list[Message], report: BudgetReport, now: int) -> tuple[list[Message], BudgetReport]:
    report.after = now
    backend.last_budget = report
    return msgs, report


# ---- native tool schemas -------------------------------------------------------------------------------
def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    first = re.split(r"(?<=[.;])\s+(?=[A-Z])", text, maxsplit=1)[0]  # "e.g. 'US'" does not end a sentence
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0].rstrip(",;:(") + "…"


def _compact_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_compact_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue  # pydantic's titles repeat the field names
        if key == "default" and value is None:
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "description" and isinstance(value, str):
            out[key] = _short(value, 90)
        elif key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {k: _compact_schema(v) for k, v in value.items()}
        else:
            out[key] = _compact_schema(value)
    for key in ("anyOf", "oneOf"):
        alts = out.get(key)
        if isinstance(alts, list):
            alts = [a for a in alts if not (isinstance(a, dict) and a.get("type") == "null")]
            if len(alts) == 1 and isinstance(alts[0], dict):  # `X | None`: the optional field is simply left out
                del out[key]
                out = {**alts[0], **out}
            else:
                out[key] = alts
    return out


def compact_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Native tool entries with the same names, parameters and types but far fewer tokens."""
    out = []
    for t in copy.deepcopy(tools):
        fn = t.get("function", t)
        fn["description"] = _short(fn.get("description", ""), 160)
        fn["parameters"] = _compact_schema(fn.get("parameters") or {"type": "object", "properties": {}})
        out.append(t)
    return out


def tools_chars(tools: list[dict[str, Any]]) -> int:
    return len(json.dumps(tools))


def native_request(tools: list[dict[str, Any]], grammar: str | None) -> tuple[list[dict[str, Any]], Any]:
    """The native-tool-calling form of a step grammar (agent/grammar.py): (tools to send, tool_choice).

    No grammar: every tool, "auto". A grammar that only lets the model answer: no tools (the caller
    makes a plain, grammar-constrained step). A grammar that must act: only its tools, the first named
    in tool_choice, so the server constrains the arguments to that tool's schema (llama.cpp server,
    vLLM). A grammar with tools and an answer: its tools, "auto"."""
    if not grammar:
        return tools, "auto"
    allowed = re.findall(r'^call-[A-Za-z0-9-]+ ::= "([^"]+)"', grammar, re.M)
    final = re.search(r"^final ::=", grammar, re.M) is not None
    picked = [t for t in tools if t.get("function", t).get("name") in allowed]
    picked.sort(key=lambda t: allowed.index(t.get("function", t).get("name")))
    if not picked:
        return [], None
    if final:
        return picked, "auto"
    return picked, {"type": "function", "function": {"name": picked[0].get("function", picked[0])["name"]}}
