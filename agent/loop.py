"""The ReAct agent: the LLM plans, LangChain tools act, the session remembers.

Public API (stable; the web page and the CLI build on it):

    run_turn(deps, llm, text, *, registry=None, on_event=None, config=None) -> TurnResult
    StepEvent(kind: "thought"|"action"|"observation"|"answer"|"error", tool, args, text, files)
    TurnResult(answer, steps=[{tool, args, observation, files, ...}], files, declined, parse_failures, ...)

One turn: the request (with a compact session context) goes to the LLM, wrapped as a LangChain
`LLM` that passes `grammar` and `stop` through to the backend. Each reply is one ReAct step,
parsed by LangChain's ReAct output parser (`langchain_classic`); the Action runs as a LangChain
tool made by synthehr.agent.tooling from the registry's ToolSpec. Grammar-constrained decoding (GBNF
from the registry), grounding of arguments in the user's words (by the roles each args field declares),
few-shot examples from each ToolSpec, the intent model (synthehr.agent.intent) and the embedding router
make a 135M model usable; the same design helps LLaMA-2. Before each call the agent says what it is
doing (the spec's `describe`). The answer is written from the tools' typed results by
synthehr.agent.answer; a capable model's own wording is kept only when the verifier finds every number,
id and claim in those results. Parse errors,
unknown tools and invalid arguments go back to the model as corrective observations listing
the valid choices. Observations are sanitised before they enter the prompt (a document that
says "Action: ..." is data, never a step). The step limit is settings.llm.max_steps.

Tracing: a turn is ONE LangChain run ("synthehr_turn", a chain run opened with the callbacks, tags and
metadata of the `config` passed to run_turn); every LLM call and tool call of the turn is its child. The
router's decision is sent as the custom event "synthehr_route" and, with each call's grounding notes, is
part of the run's outputs (`route`, `calls`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.language_models.llms import LLM

from synthehr.agent import grounding, prompts
from synthehr.agent import session as session_mod
from synthehr.agent.llm.base import cut_at_stop, cut_stream, word_pieces
from synthehr.tools.base import ToolInputError

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.agent.llm.base import LLMBackend
    from synthehr.agent.router import Route, Router
    from synthehr.tools.deps import Deps
    from synthehr.tools.registry import Registry

__all__ = ["StepEvent", "TurnResult", "run_turn", "BackendLLM", "sanitize_observation", "DEFAULT_ROUTER"]

MAX_OBSERVATION_CHARS = 900
DEFAULT_ROUTER = "auto"
CAPABILITIES = (
    "I can generate differentially private synthetic patient cohorts (e.g. \"generate 2000 Type 2 diabetes patients "
    "with 20 important observations based on the US population\"), compute statistics of them, and explain which "
    "real-world data sources, guidelines and privacy methods they are based on."
)
OUT_OF_SCOPE = "That is outside what I can help with. " + CAPABILITIES


# ---- public types ----------------------------------------------------------------------------------
@dataclass
class StepEvent:
    """Something that happened in a turn, delivered to `on_event` as it happens."""

    # "thought" | "action" | "observation" | "answer" | "error"; while the answer is written (see stream_answer):
    # "answer_delta" (a piece of the final answer), "answer_draft" (a piece of a capable model's wording, shown
    # as provisional until checked) and "answer_replace" (text: the checked answer that replaces every draft
    # piece so far; args {"kept": whether the model's wording passed the verifier}).
    kind: str
    tool: str | None = None
    args: dict[str, Any] | None = None
    text: str = ""
    files: list[str] = field(default_factory=list)


@dataclass
class TurnResult:
    answer: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    declined: bool = False
    parse_failures: int = 0
    llm_calls: int = 0
    session: str = "default"
    composed: bool = False  # the answer was written from the tools' results (not the model's wording)
    answer_problems: list[str] = field(default_factory=list)  # why the model's own wording was not used
    plan: list[dict[str, Any]] = field(default_factory=list)  # the intent model's confident plan
    latency_s: float = 0.0
    run_id: str = ""  # the turn's LangChain run id (its trace), see run_turn(config=...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- the backend as a LangChain LLM ------------------------------------------------------------------
class BackendLLM(LLM):
    """A synthehr LLMBackend as a LangChain LLM; `grammar` and `messages` pass through as invoke kwargs.

    The backend applies its model's own chat template, so the agent passes the chat `messages`;
    the string prompt is the flattened transcript (for LangChain callbacks and tracing).
    """

    backend: Any
    max_tokens: int = 256
    temperature: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "synthehr-backend"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"backend": getattr(self.backend, "name", "?"), "model_id": getattr(self.backend, "model_id", "?")}

    def _call(self, prompt: str, stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> str:
        messages = kwargs.get("messages") or [{"role": "user", "content": prompt}]
        grammar = kwargs.get("grammar")
        if not getattr(self.backend, "supports_grammar", False):
            grammar = None
        text = self.backend.generate(
            messages,
            stop=stop,
            max_tokens=int(kwargs.get("max_tokens") or self.max_tokens),
            grammar=grammar,
            temperature=self.temperature,
        )
        # Some backends ignore `stop` (HuggingFacePipeline): cut here as well.
        return cut_at_stop(text or "", stop)

    def _stream(self, prompt: str, stop: list[str] | None = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[Any]:
        """The reply as the backend writes it (`backend.stream`), cut at `stop`; one piece where the backend
        does not stream."""
        from langchain_core.outputs import GenerationChunk

        if not hasattr(self.backend, "stream"):
            yield GenerationChunk(text=self._call(prompt, stop=stop, run_manager=run_manager, **kwargs))
            return
        messages = kwargs.get("messages") or [{"role": "user", "content": prompt}]
        grammar = kwargs.get("grammar") if getattr(self.backend, "supports_grammar", False) else None
        pieces = self.backend.stream(messages, stop=stop, max_tokens=int(kwargs.get("max_tokens") or self.max_tokens),
                                     grammar=grammar, temperature=self.temperature)
        for piece in cut_stream(pieces, stop):
            if run_manager is not None:
                run_manager.on_llm_new_token(piece)
            yield GenerationChunk(text=piece)


# ---- sanitising ---------------------------------------------------------------------------------------
_REACT_WORDS = re.compile(r"(?im)\b(action\s*input|action|observation|thought|final\s*answer)\s*:")
_CHAT_TOKENS = re.compile(r"<\|[^|>]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>|<\|?(?:im_start|im_end|endoftext)\|?>", re.I)


def sanitize_observation(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
    """Make tool output or user data safe to put into the prompt: ReAct keywords and chat-template tokens
    are neutralised (so retrieved text cannot inject a step) and the length is capped."""
    text = _CHAT_TOKENS.sub(" ", str(text))
    text = _REACT_WORDS.sub(lambda m: m.group(1).lower() + " -", text)
    text = re.sub(r"[ \t]+", " ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


# ---- the agent ------------------------------------------------------------------------------------------
class _Stop(Exception):
    def __init__(self, answer: str, declined: bool = False):
        super().__init__(answer)
        self.answer = answer
        self.declined = declined


class ReActAgent:
    def __init__(
        self,
        deps: "Deps",
        llm: Any,
        registry: "Registry",
        *,
        router: "Router | None" = None,
        intent_model: Any = None,
        on_event: Callable[[StepEvent], None] | None = None,
        max_steps: int | None = None,
        config: Any = None,
    ):
        from synthehr.agent.tooling import to_langchain_tools

        self.deps = deps
        self.settings = deps.settings
        self.registry = registry
        self.router = router
        self.intent_model = intent_model
        self.on_event = on_event
        self.config = dict(config or {})
        self.callbacks: Any = None  # the turn run's child callback manager (set in run())
        self.route_info: dict[str, Any] = {}
        self.max_steps = max_steps or self.settings.llm.max_steps
        self.lc_llm = llm if isinstance(llm, BackendLLM) else BackendLLM(
            backend=llm, max_tokens=self.settings.llm.max_new_tokens, temperature=self.settings.llm.temperature)
        self.backend = self.lc_llm.backend
        self.tools = to_langchain_tools(registry, deps)
        from langchain_classic.agents.output_parsers import ReActSingleInputOutputParser

        self.parser = ReActSingleInputOutputParser()
        self.native = bool(self.settings.llm.tool_calling and getattr(self.backend, "supports_tool_calls", False)
                           and hasattr(self.backend, "generate_tool_call"))
        self.constrained = bool(self.settings.llm.constrained and getattr(self.backend, "supports_grammar", False))
        self._grammars: dict[tuple[Any, ...], str] = {}
        self.grammar: str | None = self._grammar() if self.constrained else None

    def _grammar(self, tools: tuple[str, ...] | None = None, final: bool = True, actions: bool = True) -> str:
        key = (tools, final, actions)
        if key not in self._grammars:
            from synthehr.agent.grammar import build_step_grammar

            self._grammars[key] = build_step_grammar(self.registry, tools=list(tools) if tools else None,
                                                     allow_final=final, allow_actions=actions)
        return self._grammars[key]

    def _plan_grammar(self, pending: list["Route"], whole: "Route | None", any_ok: bool, last_failed: bool) -> str | None:
        """The grammar of the next step. With the router, a step that must act may only name the likely
        tools, and a step after the last needed tool may only answer; the model still writes the thought,
        the arguments and the answer. Without the router (or after an error) every tool and the answer."""
        if not self.constrained:
            return None
        if self.router is None or last_failed:
            return self.grammar
        def top_tools(route: "Route", first: str) -> tuple[str, ...]:
            ranked = [t for t, v in sorted(route.scores.items(), key=lambda kv: -kv[1])
                      if t in self.registry and t != first and v >= route.scores.get(first, 0) - 0.1]
            return tuple([first] + ranked[:1])
        if pending:
            return self._grammar(tools=top_tools(pending[0], pending[0].tool), final=False)
        if any_ok:
            return self._grammar(actions=False)
        if whole is not None and whole.tool in self.registry and whole.score >= self.router.min_score:
            return self._grammar(tools=top_tools(whole, whole.tool), final=False)
        if whole is not None and whole.tool == "none" and whole.confident:
            return self._grammar(actions=False)
        return self.grammar

    # -- events ------------------------------------------------------------------------------------------
    def emit(self, kind: str, tool: str | None = None, args: dict[str, Any] | None = None, text: str = "",
             files: list[str] | None = None) -> None:
        if self.on_event is not None:
            if kind == "action" and getattr(self, "_draft", ""):
                self._withdraw_draft()  # the model's "final answer" was not final: a planned tool runs first
            self.on_event(StepEvent(kind=kind, tool=tool, args=args, text=text, files=list(files or [])))

    # -- one turn -----------------------------------------------------------------------------------------
    def run(self, text: str) -> TurnResult:
        started = time.perf_counter()
        deps = self.deps
        name = deps.session.name
        _, turns = deps.workspace.load_session(name)
        sess = session_mod.Session(name=name, state=deps.session, turns=list(turns))
        result = TurnResult(answer="", session=name)
        self.steps: list[dict[str, Any]] = []
        self.result = result
        run_manager = self._open_trace(text)
        result.run_id = str(run_manager.run_id)
        self.callbacks = run_manager.get_child()
        try:
            result.answer = self._loop(text, sess)
        except _Stop as stop:
            result.answer = stop.answer
            result.declined = stop.declined
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        result.steps = self.steps
        run_manager.on_chain_end(self._trace_outputs(result))
        result.files = list(dict.fromkeys(f for s in self.steps for f in (s.get("files") or [])))
        self.stream_answer(result.answer)
        self.emit("answer", text=result.answer, files=result.files)
        result.latency_s = round(time.perf_counter() - started, 3)
        sess.add_turn(text, self.steps, result.answer, result.files, _now())
        session_mod.save(deps, sess)
        return result

    # -- the turn as one LangChain run -------------------------------------------------------------------
    def _open_trace(self, text: str) -> Any:
        """Open the turn's chain run with the config's callbacks, tags and metadata (LangChain's own rules)."""
        from langchain_core.callbacks import CallbackManager

        cfg = self.config
        manager = CallbackManager.configure(cfg.get("callbacks"), None, inheritable_tags=cfg.get("tags"),
                                            inheritable_metadata=cfg.get("metadata"))
        return manager.on_chain_start(None, {"input": text}, run_id=cfg.get("run_id"),
                                      name=cfg.get("run_name") or "synthehr_turn")

    def _trace_event(self, name: str, data: dict[str, Any]) -> None:
        """A custom event on the turn's run (tracers show it inside the turn)."""
        from langchain_core.callbacks.manager import dispatch_custom_event

        if self.callbacks is not None and self.callbacks.handlers:
            dispatch_custom_event(name, data, config={"callbacks": self.callbacks})

    def _trace_outputs(self, result: TurnResult) -> dict[str, Any]:
        """The turn run's outputs: the answer, the router's decision and each call's source and grounding notes."""
        calls = [{"tool": s.get("tool"), "source": s.get("source"), "args": _safe_data(s.get("args")),
                  "ok": bool(s.get("ok")), "notes": list(s.get("notes") or []), "error": s.get("error")}
                 for s in self.steps if s.get("tool")]
        return {"output": result.answer, "declined": result.declined, "route": dict(self.route_info),
                "calls": calls, "llm_calls": result.llm_calls, "parse_failures": result.parse_failures}

    def _decline(self, answer: str) -> None:
        raise _Stop(answer, declined=True)

    def _loop(self, text: str, sess: session_mod.Session) -> str:
        result = self.result
        facts = grounding.extract_facts(text)
        try:
            grounding.check_request(text)
            grounding.check_limits(facts, self.settings)
        except grounding.Decline as exc:
            self.emit("thought", text="The request must be declined.")
            self.route_info = {"decided_by": "declined before routing (request or limits)"}
            self._decline(str(exc))

        intents: list[Route] = []
        none_route: Route | None = None
        whole: Route | None = None
        routes: list[Route] = []
        decided_by = "router"
        if self.router is not None:
            routes = self.router.plan(text)
            whole = routes[0] if len(routes) == 1 else None
            intents = [r for r in routes if r.confident and r.tool in self.registry]
            if routes and routes[0].tool == "none" and routes[0].confident:
                none_route = routes[0]
        if self.intent_model is not None and len(intents) < 2:
            # The intent model (trained on generated paraphrases and the tools' own examples) decides when it is
            # confident: factual questions go to retrieval, generation requests keep their attributes.
            from synthehr.agent.intent import NONE as NO_TOOL, as_route

            planned = [as_route(i) for i in self.intent_model.plan(text) if i.confident]
            self.result.plan = [{"tool": r.tool, "p": round(r.score, 3)} for r in planned]
            if planned and all(r.tool in self.registry for r in planned):
                intents, none_route = planned, None
                decided_by = "intent model"
                whole = planned[0] if len(planned) == 1 else None
            elif len(planned) == 1 and planned[0].tool == NO_TOOL and not intents:
                none_route = planned[0]
            if (not intents and whole is not None and whole.tool in self.registry
                    and whole.score >= self.router.min_score - 0.1
                    and self._is_generation(whole.tool) and grounding._last_generation(sess.state) is not None
                    and (facts.filters() or facts.older or facts.younger or facts.n is not None)):
                # A restriction of the last cohort ("now only people over 75"): the session makes it confident.
                intents = [whole]

        self.route_info = {
            "router": [{"tool": r.tool, "score": round(float(r.score), 3), "confident": bool(r.confident)}
                       for r in (routes if self.router is not None else [])],
            "intent_plan": list(self.result.plan),
            "planned_tools": [r.tool for r in intents],
            # who decides the tool: the router or the intent model when confident (the model's other choices
            # are overruled), else the LLM; a confident "no tool" is a decision too.
            "decided_by": decided_by if intents else (f"{decided_by} (no tool)" if none_route is not None else "llm"),
        }
        self._trace_event("synthehr_route", self.route_info)
        messages: list[dict[str, str]] = [{"role": "system", "content": prompts.system_prompt(self.registry, self.settings)}]
        messages += prompts.few_shot_messages(self.registry)
        messages.append({"role": "user", "content": prompts.user_message(sanitize_observation(text, 2000),
                                                                         sess.context_text())})
        consecutive_failures = 0
        calls: set[str] = set()
        final_text: str | None = None
        for _ in range(self.max_steps):
            any_ok = any(st.get("ok") for st in self.steps)
            if (any_ok and not intents and self.steps[-1].get("ok") and not self._model_phrases()
                    and (self.router is not None or self.intent_model is not None)):
                # The planned tools have run and this model does not phrase answers: the writer answers now
                # (asking the model for a final answer it would not be shown costs a long generation).
                break
            last_failed = bool(self.steps) and not self.steps[-1].get("ok")
            grammar = self._plan_grammar(intents, whole, any_ok, last_failed)
            raw = self._native_step(messages, grammar) if self.native else self._generate(messages, grammar)
            result.llm_calls += 1
            step_text = cut_at_stop(raw, prompts.STOP).strip()
            parsed, error = self._parse(step_text)
            thought = _thought(step_text)  # the model's own line: kept in the step, not shown as progress
            if error is not None:
                result.parse_failures += 1
                consecutive_failures += 1
                route = intents[0] if intents else None
                if consecutive_failures >= 2 and route is not None:
                    obs = self._call(route.tool, None, facts, sess, thought, source="router", calls=calls)
                    intents = [i for i in intents if i.tool != route.tool]
                    messages += [{"role": "assistant", "content": prompts.format_step(
                        thought or "Use the tool.", route.tool, self.steps[-1].get("args"))},
                        {"role": "user", "content": f"Observation: {obs}"}]
                    consecutive_failures = 0
                    continue
                self.steps.append({"tool": None, "args": None, "observation": error, "files": [], "ok": False,
                                   "error": "parse", "thought": thought, "raw": step_text[:500]})
                self.emit("error", text=error)
                messages += [{"role": "assistant", "content": step_text[:600] or "(empty)"},
                             {"role": "user", "content": f"Observation: {error}"}]
                continue

            kind, tool, tool_input = parsed
            if kind == "final":
                done = [s for s in self.steps if s.get("tool") and s.get("ok")]
                pending = [i for i in intents if not any(s["tool"] == i.tool for s in done)]
                if pending:
                    route = pending[0]
                    obs = self._call(route.tool, None, facts, sess, thought, source="router", calls=calls)
                    if self.steps[-1].get("ok") or self.steps[-1].get("error") == "repeat":
                        intents = [i for i in intents if i.tool != route.tool]
                    messages += [{"role": "assistant", "content": prompts.format_step(
                        "Use the tool the request needs.", route.tool, self.steps[-1].get("args"))},
                        {"role": "user", "content": f"Observation: {obs}"}]
                    continue
                final_text = tool_input
                if (none_route is not None and not self.steps and not intents
                        and not re.search(r"\b(?:can't|cannot|can not|unable|not able|outside|only)\b", final_text or "", re.I)):
                    self._decline(OUT_OF_SCOPE)
                break

            # An action.
            tool = _clean_tool_name(tool)
            route = intents[0] if intents else None
            source = "model"
            if tool not in self.registry:
                consecutive_failures += 1
                if consecutive_failures >= 2 and route is not None:
                    tool, tool_input, source = route.tool, None, "router"
                else:
                    result.parse_failures += 1
                    err = prompts.UNKNOWN_TOOL.format(name=tool[:60], tools=", ".join(self.registry.names))
                    self.steps.append({"tool": None, "args": None, "observation": err, "files": [], "ok": False,
                                       "error": "unknown_tool", "thought": thought, "requested_tool": tool[:60]})
                    self.emit("error", tool=None, text=err)
                    messages += [{"role": "assistant", "content": step_text[:600]},
                                 {"role": "user", "content": f"Observation: {err}"}]
                    continue
            if route is not None and tool != route.tool and tool not in {i.tool for i in intents}:
                # The model's choice contradicts a confident router decision.
                tool, tool_input, source = route.tool, None, "router"
            if (none_route is not None and not intents and not self.steps and source == "model"
                    and none_route.margin >= 0.1):
                self._decline(OUT_OF_SCOPE)
            consecutive_failures = 0
            args: dict[str, Any] | None = None
            if tool_input is not None:
                args, err = self._parse_json(tool, tool_input)
                if err is not None:
                    result.parse_failures += 1
                    consecutive_failures += 1
                    self.steps.append({"tool": tool, "args": None, "observation": err, "files": [], "ok": False,
                                       "error": "json", "thought": thought})
                    self.emit("error", tool=tool, text=err)
                    messages += [{"role": "assistant", "content": step_text[:600]},
                                 {"role": "user", "content": f"Observation: {err}"}]
                    continue
            obs = self._call(tool, args, facts, sess, thought, source=source, calls=calls)
            step = self.steps[-1]
            if step.get("ok"):
                intents = [i for i in intents if i.tool != tool]
            shown = prompts.format_step(thought or "Use the tool.", tool, step.get("args") or args or {})
            follow = ""
            if intents and step.get("ok"):
                follow = f"\nThe request also asks: \"{sanitize_observation(intents[0].text, 200)}\"."
            messages += [{"role": "assistant", "content": shown},
                         {"role": "user", "content": f"Observation: {obs}{follow}"}]
        self._out_of_scope = none_route is not None and not intents
        return self._finalize(final_text, text, sess)

    # -- model call and parsing ---------------------------------------------------------------------------
    def _generate(self, messages: list[dict[str, str]], grammar: str | None) -> str:
        from synthehr.agent.llm.budget import fit_messages  # the prompt budget: every step fits the context

        messages, _ = fit_messages(self.backend, messages, max_new_tokens=self.settings.llm.max_new_tokens)
        prompt = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
        kwargs: dict[str, Any] = {"messages": messages}
        if grammar is not None:
            kwargs["grammar"] = grammar
        if self._streams():
            return self._stream_step(prompt, kwargs)
        return self.lc_llm.invoke(prompt, config={"callbacks": self.callbacks}, stop=list(prompts.STOP), **kwargs)

    # -- the answer as it is written -------------------------------------------------------------------
    def _streams(self) -> bool:
        """Whether a step's final answer is streamed as it is written: someone listens, the backend streams,
        and the model's wording may be shown (the embedded model's never is: the writer answers)."""
        return self.on_event is not None and hasattr(self.backend, "stream") and self._model_phrases()

    def _stream_step(self, prompt: str, kwargs: dict[str, Any]) -> str:
        """One ReAct step through `stream`: once it shows itself as the final answer (a "Final Answer:" before
        any "Action:"), its text goes out as provisional `answer_draft` pieces while it is written. The verifier
        has not seen it yet; stream_answer later confirms it or replaces it."""
        text = ""
        marker = "Final Answer:"
        for chunk in self.lc_llm.stream(prompt, config={"callbacks": self.callbacks}, stop=list(prompts.STOP), **kwargs):
            text += str(chunk)
            i = text.find(marker)
            if i < 0 or re.search(r"Action\s*:", text[:i]):
                continue
            body = text[i + len(marker):].lstrip()
            draft = getattr(self, "_draft", "")
            if body.startswith(draft) and len(body) > len(draft):
                self._draft = body
                self.emit("answer_draft", text=body[len(draft):])
        return text

    def _withdraw_draft(self) -> None:
        self._draft = ""
        if self.on_event is not None:
            self.on_event(StepEvent(kind="answer_replace", text="", args={"kept": False}))

    def stream_answer(self, answer: str) -> None:
        """Send the final answer as it is written, before the `answer` event (which always carries it whole).
        Written by the answer writer: in word pieces (`answer_delta`), which join to exactly `answer`. After
        a capable model's streamed draft: one `answer_replace` with the checked answer, `kept` saying whether
        the model's wording passed the verifier (if not, the page replaces the draft with the writer's text)."""
        if self.on_event is None:
            return
        draft = getattr(self, "_draft", "")
        if draft:
            kept = not self.result.answer_problems and answer.startswith(draft.strip())
            self._draft = ""
            self.on_event(StepEvent(kind="answer_replace", text=answer, args={"kept": kept}))
            return
        for piece in word_pieces(answer):
            self.emit("answer_delta", text=piece)

    def _native_step(self, messages: list[dict[str, str]], grammar: str | None = None) -> str:
        """One step through the server's native tool calling, written as the equivalent ReAct step, so that
        parsing, grounding, validation and safety are exactly those of the text path."""
        from synthehr.agent.llm.budget import compact_tools, fit_messages, native_request
        from synthehr.agent.tooling import openai_tool_schemas

        # The step's grammar, in native terms: only its tools (one named when it must act), or a plain step.
        tools, choice = native_request(compact_tools(openai_tool_schemas(self.registry)), grammar)
        if not tools:
            return self._generate(messages, grammar)
        messages, _ = fit_messages(self.backend, messages, max_new_tokens=self.settings.llm.max_new_tokens, tools=tools)
        llm_runs = self._llm_run_start(messages, tools)
        try:
            reply = self.backend.generate_tool_call(messages, tools, tool_choice=choice,
                                                    max_tokens=self.settings.llm.max_new_tokens)
        except BaseException as exc:
            for r in llm_runs:
                r.on_llm_error(exc)
            raise
        step = self._native_reply_step(reply)
        self._llm_run_end(llm_runs, step)
        return step

    def _llm_run_start(self, messages: list[dict[str, str]], tools: list[dict[str, Any]]) -> list[Any]:
        """The native tool call as an LLM run inside the turn (it bypasses the LangChain LLM wrapper)."""
        if self.callbacks is None or not self.callbacks.handlers:
            return []
        prompt = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
        return self.callbacks.on_llm_start({"name": "synthehr-native-tool-call", **self.lc_llm._identifying_params},
                                           [prompt], invocation_params={"tools": [t["function"]["name"] for t in tools]},
                                           name="synthehr-native-tool-call")

    @staticmethod
    def _llm_run_end(runs: list[Any], text: str) -> None:
        if runs:
            from langchain_core.outputs import Generation, LLMResult

            for r in runs:
                r.on_llm_end(LLMResult(generations=[[Generation(text=text)]]))

    @staticmethod
    def _native_reply_step(reply: Any) -> str:
        content = (getattr(reply, "content", "") or "").strip()
        calls = list(getattr(reply, "tool_calls", []) or [])
        if calls:
            c = calls[0]
            args = c.arguments if c.arguments is not None else c.raw_arguments
            thought = content.splitlines()[0][:200] if content else "Use the tool."
            return (f"Thought: {thought}\nAction: {c.name}\nAction Input: "
                    f"{json.dumps(args) if isinstance(args, dict) else args}")
        if re.search(r"Action\s*:|Final Answer\s*:", content):
            return content
        return f"Thought: I can answer now.\nFinal Answer: {content}"

    def _parse(self, step_text: str) -> tuple[tuple[str, str, str | None] | None, str | None]:
        from langchain_core.agents import AgentAction, AgentFinish
        from langchain_core.exceptions import OutputParserException

        tools = ", ".join(self.registry.names)
        if not step_text.strip():
            return None, prompts.CORRECT_FORMAT.format(tools=tools)
        text = step_text
        # A small model sometimes writes both an action and a final answer: the first one counts.
        if "Final Answer:" in text and re.search(r"Action\s*:", text):
            if text.index("Final Answer:") < re.search(r"Action\s*:", text).start():
                text = text[: re.search(r"\n?\s*Action\s*:", text).start()]
            else:
                text = text[: text.index("Final Answer:")]
        try:
            parsed = self.parser.parse(text)
        except OutputParserException:
            return None, prompts.CORRECT_FORMAT.format(tools=tools)
        if isinstance(parsed, AgentFinish):
            return ("final", "", str(parsed.return_values.get("output", ""))), None
        assert isinstance(parsed, AgentAction)
        return ("action", parsed.tool, str(parsed.tool_input)), None

    def _parse_json(self, tool: str, tool_input: str) -> tuple[dict[str, Any] | None, str | None]:
        raw = tool_input.strip().strip("`").strip()
        if raw.startswith("json"):
            raw = raw[4:].strip()
        candidates = [raw]
        m = re.search(r"\{.*\}", raw, re.S)
        if m:
            candidates.append(m.group(0))
        for c in candidates:
            try:
                value = json.loads(c)
            except (json.JSONDecodeError, ValueError):
                continue
            if isinstance(value, dict):
                return value, None
        if raw in ("", "{}", "None", "none", "null"):
            return {}, None
        spec = self.registry.get(tool)
        from synthehr.agent.tooling import describe_args

        keys = ", ".join(a["name"] + ("*" if a["required"] else "") for a in describe_args(spec.args_model))
        example = json.dumps({a["name"]: "..." for a in describe_args(spec.args_model) if a["required"]} or {})
        return None, prompts.BAD_JSON.format(name=tool, example=example, keys=keys)

    # -- one tool call ------------------------------------------------------------------------------------
    def _call(self, tool: str, args: dict[str, Any] | None, facts: grounding.Facts, sess: session_mod.Session,
              thought: str, *, source: str, calls: set[str]) -> str:
        from pydantic import ValidationError

        from synthehr.agent.tooling import invoke_tool, validation_message

        spec = self.registry.get(tool)
        step: dict[str, Any] = {"tool": tool, "args": None, "observation": "", "files": [], "ok": False,
                                "thought": thought, "source": source}
        self.steps.append(step)
        notes: list[str] = []
        try:
            raw_args = dict(args or {})
            grounded, notes = grounding.ground_args(spec, raw_args, facts, sess.state, self.settings,
                                                    sources=self._sources(), columns=self._source_columns())
            grounding.check_args_limits(spec, grounded, self.settings)
            validated = spec.args_model.model_validate(grounded)
            call_args = validated.model_dump(exclude_unset=True)
        except grounding.Decline as exc:
            self.steps.pop()
            self._decline(str(exc))
        except ToolInputError as exc:
            if any(st.get("tool") == tool and st.get("error") == "arguments" for st in self.steps[:-1]):
                self.steps[-1].update(observation=sanitize_observation(str(exc)), ok=False, error="arguments", args=args)
                raise _Stop("I need more information: " + str(exc).replace("Ask the user which condition they want.",
                                                                            "Which condition do you want?"))
            return self._fail(step, str(exc), args, notes)
        except ValidationError as exc:
            return self._fail(step, validation_message(spec, exc), args, notes)
        step["args"] = call_args
        step["notes"] = notes
        if self._is_generation(tool):
            cols = self._source_columns()
            unapplied = [p for r, p in facts.attributes if cols is not None and re.split(r"[<>=!]", r)[0] not in cols]
            if facts.unmet or unapplied:
                step["unmet"] = list(dict.fromkeys(facts.unmet + unapplied))
        if source == "router":
            step["notes"] = [f"tool chosen by the router (the model chose otherwise)"] + notes
        key = tool + json.dumps(call_args, sort_keys=True, default=str)
        if key in calls:
            msg = prompts.REPEATED.format(name=tool)
            step.update(observation=msg, ok=False, error="repeat")
            self.emit("error", tool=tool, args=call_args, text=msg)
            if sum(1 for s in self.steps if s.get("error") == "repeat") >= 2:
                raise _Stop(self._finalize(None, facts.text, sess))
            return msg
        calls.add(key)
        doing = describe_call(spec, self.deps, validated)
        step["doing"] = doing
        self.emit("thought", tool=tool, args=call_args, text=doing)
        self.emit("action", tool=tool, args=call_args, text=doing)
        before = sess.state.to_dict()
        content, artifact, ok = invoke_tool(self.tools[tool], call_args, f"call-{uuid.uuid4().hex[:8]}",
                                            callbacks=self.callbacks)
        if ok and artifact is not None:
            session_mod.update_state(sess.state, tool, call_args, artifact, before)
        obs = sanitize_observation(content)
        files = [str(f) for f in (artifact.files if artifact is not None else [])]
        outside = [f for f in files if not self.deps.workspace.contains(f)]
        if outside:  # tools write only inside the workspace; never hand out other paths
            files = [f for f in files if f not in outside]
            step.setdefault("notes", []).append(f"{len(outside)} file path(s) outside the workspace withheld")
        step.update(observation=obs, files=files, ok=ok, data=_safe_data(artifact.data if artifact else None))
        if ok and artifact is not None and hasattr(artifact, "typed"):
            step["result"] = _safe_data(artifact.typed())
        if not ok:
            step["error"] = "tool"
        self.emit("observation" if ok else "error", tool=tool, args=call_args, text=obs, files=files)
        return obs

    def _is_generation(self, tool: str) -> bool:
        roles = set(grounding.model_roles(self.registry.get(tool).args_model).values())
        return {"condition", "n"} <= roles

    def _source_columns(self) -> set[str] | None:
        """The columns of the registered sources (attribute filters apply only where a source has the column)."""
        try:
            return {c for name in self.deps.catalog.names() for c in self.deps.catalog.get(name).column_map()}
        except Exception:  # noqa: BLE001 - no catalog: attributes are applied as the user wrote them
            return None

    def _sources(self) -> list[str]:
        try:
            return list(self.deps.catalog.names())
        except Exception:  # noqa: BLE001 - grounding works without the catalog
            return []

    def _fail(self, step: dict[str, Any], message: str, args: dict[str, Any] | None, notes: list[str]) -> str:
        msg = sanitize_observation(message)
        step.update(observation=msg, ok=False, error="arguments", args=args, notes=notes)
        self.emit("error", tool=step["tool"], args=args, text=msg)
        return msg

    # -- the final answer ---------------------------------------------------------------------------------
    def _finalize(self, model_answer: str | None, text: str, sess: session_mod.Session) -> str:
        """The answer: written from the tools' typed results (synthehr.agent.answer); a capable model's own
        wording is kept only when the verifier finds every number, id and claim in those results."""
        from synthehr.agent import answer as answer_mod

        done = [s for s in self.steps if s.get("tool") and s.get("observation") and s.get("error") != "repeat"]
        model = _drop_trailing_questions((model_answer or "").strip())
        if not done:
            if _usable(model):
                return model
            errors = [s["observation"] for s in self.steps if s.get("observation")]
            if errors:
                self.result.composed = True
                return "I could not complete the request. " + errors[-1]
            # A request the planner judged out of scope is told so (not only what synthehr can do).
            return OUT_OF_SCOPE if getattr(self, "_out_of_scope", False) else CAPABILITIES
        self.emit("thought", text="Writing the answer from the results.")
        chosen, problems = answer_mod.choose_answer(
            model if _usable(model) else None, self.steps, model_phrases=self._model_phrases(), request=text,
            context=sess.context_text(), root=self.deps.workspace.root)
        self.result.composed = chosen != model
        self.result.answer_problems = problems
        return chosen

    def _model_phrases(self) -> bool:
        """Whether the model may phrase the answer (capable models); the embedded model never does."""
        flag = getattr(self.backend, "phrases_answers", None)
        if flag is not None:
            return bool(flag)
        return getattr(self.backend, "name", "") != "embedded"


def describe_call(spec: Any, deps: "Deps", args: Any) -> str:
    """What the agent is about to do, in the clinician's words (the tool's own `describe`, else its description)."""
    fn = getattr(spec, "describe", None)
    if fn is not None:
        try:
            text = fn(deps, args)
            if text:
                return str(text)
        except Exception:  # noqa: BLE001 - a description must never stop the call
            pass
    first = re.split(r"(?<=[.:])\s", " ".join(spec.description.split()))[0].rstrip(".:")
    return first[:1].upper() + first[1:] + "."


# ---- helpers -------------------------------------------------------------------------------------------------
def _now() -> str:
    from synthehr.tools.store.workspace import now_iso

    return now_iso()


def _thought(step_text: str) -> str:
    m = re.search(r"Thought\s*:\s*(.*?)(?:\n|$)", step_text)
    return m.group(1).strip()[:300] if m else ""


def _clean_tool_name(name: str) -> str:
    name = name.strip().strip("`'\"[]().:").strip()
    name = name.split("\n")[0].strip()
    return re.sub(r"\s+", "_", name)


def _drop_trailing_questions(answer: str) -> str:
    """Remove questions the model appended after its answer ("What is the difference between the two?");
    the rest of the text, line breaks included, is kept as it is."""
    out = answer.strip()
    while True:
        m = re.search(r"(?<=[.!?])\s+[^.!?]*\?$", out)
        if not m:
            return out
        out = out[: m.start()].rstrip()


def _usable(answer: str) -> bool:
    a = answer.strip()
    if len(a) < 12 or len(re.findall(r"[A-Za-z]{3,}", a)) < 3:
        return False
    if _REACT_WORDS.search(a) or _CHAT_TOKENS.search(a):
        return False
    words = re.findall(r"\w+", a.lower())
    return len(set(words)) >= max(3, len(words) // 4)


def _safe_data(data: Any) -> Any:
    """A JSON-safe copy of a tool's structured result (for --json and the web page)."""
    if data is None:
        return None
    try:
        return json.loads(json.dumps(data, default=str))
    except (TypeError, ValueError):
        return None


def _default_registry() -> "Registry":
    """Built-in tools plus third-party tools declared in the `synthehr.tools` entry-point group."""
    from synthehr.agent.plugins import registry_with_plugins

    return registry_with_plugins()[0]


def run_turn(
    deps: "Deps",
    llm: "LLMBackend | BackendLLM",
    text: str,
    *,
    registry: "Registry | None" = None,
    on_event: Callable[[StepEvent], None] | None = None,
    router: "Router | str | None" = DEFAULT_ROUTER,
    max_steps: int | None = None,
    intent: Any = "auto",
    config: Any = None,
) -> TurnResult:
    """Answer one user request in the session `deps.session.name`, calling tools as the LLM decides.

    `llm` is an synthehr.agent.llm.base.LLMBackend (or a BackendLLM). `registry` defaults to every tool
    synthehr ships. `on_event` receives StepEvents as they happen. `router` is "auto" (the packaged
    embedding router when it loads), None (no router) or a Router. `intent` is "auto" (the packaged intent
    model whenever a router is used), None, or an synthehr.agent.intent.IntentModel. History and tool state are saved
    in the workspace's sessions table after the turn.

    `config` is a LangChain `RunnableConfig` (callbacks, tags, metadata, run_name, run_id): the turn is one
    run ("synthehr_turn") whose children are every LLM call and tool call; its outputs carry the router's
    decision (`route`) and each call's source and grounding notes (`calls`). TurnResult.run_id is its id.
    """
    from synthehr.errors import require_request

    require_request(text)  # an empty request never reaches a model (router or LLM)
    registry = registry if registry is not None else _default_registry()
    if router == "auto":
        from synthehr.agent.router import default_router

        router = default_router(registry, deps.settings.knowledge.embedding_model)
    elif isinstance(router, str):
        raise ValueError("router must be 'auto', None or a Router")
    if intent == "auto":
        # The intent model plans with the router; without a router the LLM alone decides (as tests script it).
        from synthehr.agent.intent import default_intent_model

        intent = default_intent_model(registry) if router is not None else None
    agent = ReActAgent(deps, llm, registry, router=router, intent_model=intent, on_event=on_event,
                       max_steps=max_steps, config=config)
    return agent.run(text)
