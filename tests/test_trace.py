"""A turn is ONE LangChain trace: run_turn(config=RunnableConfig) opens the turn's run, every LLM call and tool call
is its child, and the router's decision and the grounding notes are in the run (a real callback handler records it)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from synthehr.agent.llm.base import ScriptedLLM
from synthehr.agent.loop import run_turn
from synthehr.agent.router import Router
from tests.test_agent import Recorder, final, make_registry, step
from tests.test_agent_router import bow_embed


class RecordingHandler(BaseCallbackHandler):
    """Records what a LangChain tracer would see: each run's kind, name, parent, tags and metadata."""

    raise_error = True  # a broken handler fails the test (LangChain would only log it)

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.ends: dict[UUID, Any] = {}
        self.custom: list[dict[str, Any]] = []

    def _start(self, kind: str, serialized: Any, run_id: UUID, parent_run_id: UUID | None, given: Any,
               **kw: Any) -> None:
        self.runs.append({"kind": kind, "name": kw.get("name") or (serialized or {}).get("name"), "run_id": run_id,
                          "parent": parent_run_id, "tags": list(kw.get("tags") or []),
                          "metadata": dict(kw.get("metadata") or {}), "inputs": given})

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kw):  # noqa: ANN001
        self._start("chain", serialized, run_id, parent_run_id, inputs, **kw)

    def on_chain_end(self, outputs, *, run_id, **kw):  # noqa: ANN001
        self.ends[run_id] = outputs

    def on_llm_start(self, serialized, prompts, *, run_id, parent_run_id=None, **kw):  # noqa: ANN001
        self._start("llm", serialized, run_id, parent_run_id, prompts, **kw)

    def on_tool_start(self, serialized, input_str, *, run_id, parent_run_id=None, **kw):  # noqa: ANN001
        self._start("tool", serialized, run_id, parent_run_id, input_str, **kw)

    def on_custom_event(self, name, data, *, run_id, **kw):  # noqa: ANN001
        self.custom.append({"name": name, "data": data, "run_id": run_id})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["kind"] == kind]


def test_a_turn_is_one_trace_with_llm_and_tool_calls_as_children(deps):
    rec = Recorder()
    handler = RecordingHandler()
    script = [step("generate_cohort", {"condition": "copd", "n": 300}), final("Generated 750 patients.")]
    llm = ScriptedLLM(script)
    config = {"callbacks": [handler], "tags": ["study-42"], "metadata": {"clinician": "dr-a"}}
    result = run_turn(deps, llm, "generate 750 type 2 diabetes patients", registry=make_registry(rec), router=None,
                      config=config)
    assert llm.exhausted and rec.calls[0][1]["n"] == 750

    (turn,) = [r for r in handler.of("chain") if r["name"] == "synthehr_turn"]
    assert turn["parent"] is None and turn["inputs"] == {"input": "generate 750 type 2 diabetes patients"}
    assert "study-42" in turn["tags"] and turn["metadata"]["clinician"] == "dr-a"
    assert result.run_id == str(turn["run_id"])

    llm_runs, tool_runs = handler.of("llm"), handler.of("tool")
    assert len(llm_runs) == result.llm_calls == 2
    assert [r["name"] for r in tool_runs] == ["generate_cohort"]
    for child in llm_runs + tool_runs:  # nested under the turn, with the config's tags and metadata inherited
        assert child["parent"] == turn["run_id"]
        assert "study-42" in child["tags"] and child["metadata"]["clinician"] == "dr-a"
    # nothing else is a root run: the turn is the one trace
    assert [r for r in handler.runs if r["parent"] is None] == [turn]

    out = handler.ends[turn["run_id"]]
    assert out["output"] == result.answer
    assert out["route"]["decided_by"] == "llm" and out["route"]["router"] == []
    (call,) = out["calls"]
    assert call["tool"] == "generate_cohort" and call["source"] == "model" and call["args"]["n"] == 750
    assert any("n: 300 -> 750" in n for n in call["notes"])  # the grounding correction is in the trace
    (event,) = [e for e in handler.custom if e["name"] == "synthehr_route"]
    assert event["run_id"] == turn["run_id"] and event["data"]["decided_by"] == "llm"


def test_the_router_decision_is_in_the_turns_run(deps):
    rec = Recorder()
    registry = make_registry(rec)
    router = Router(bow_embed, registry, min_score=0.3, min_margin=0.05)
    handler = RecordingHandler()
    script = [step("explain_provenance", {"question": "x"}), final("The mean HbA1c is 7.4 %.")]
    result = run_turn(deps, ScriptedLLM(script), "what is their mean HbA1c?", registry=registry, router=router,
                      intent=None, config={"callbacks": [handler], "run_name": "clinic-turn"})
    assert [c[0] for c in rec.calls] == ["cohort_stats"]
    (turn,) = [r for r in handler.of("chain") if r["parent"] is None]
    assert turn["name"] == "clinic-turn"
    out = handler.ends[turn["run_id"]]
    assert out["route"]["decided_by"] == "router" and out["route"]["planned_tools"] == ["cohort_stats"]
    assert out["route"]["router"][0]["tool"] == "cohort_stats" and out["route"]["router"][0]["confident"]
    (call,) = out["calls"]
    assert call["source"] == "router" and any("chosen by the router" in n for n in call["notes"])
    assert [r["parent"] for r in handler.of("tool")] == [turn["run_id"]]


def test_a_turn_without_config_still_runs_and_has_a_run_id(deps):
    rec = Recorder()
    result = run_turn(deps, ScriptedLLM([final("I can generate synthetic cohorts.")]), "hello there, what can you do?",
                      registry=make_registry(rec), router=None)
    assert UUID(result.run_id) and rec.calls == []


def test_native_tool_calls_are_llm_runs_inside_the_turn(deps, settings):
    """A server's native tool calling bypasses the LangChain LLM wrapper; its calls are still children of the turn."""
    from types import SimpleNamespace as NS

    class NativeLLM:
        name, model_id, supports_grammar, supports_tool_calls = "openai", "served", False, True

        def __init__(self) -> None:
            self.replies = [NS(content="Generating.", tool_calls=[NS(name="generate_cohort", id="c1", raw_arguments="",
                                                                      arguments={"condition": "t2d", "n": 9})]),
                            NS(content="Generated 40 patients.", tool_calls=[])]

        def generate_tool_call(self, messages, tools, **kw):  # noqa: ANN001
            if not self.replies:
                raise AssertionError("script exhausted")
            return self.replies.pop(0)

        def generate(self, *a, **k):  # noqa: ANN002
            raise AssertionError("text generation used")

    settings.llm.tool_calling = True
    rec, handler = Recorder(), RecordingHandler()
    result = run_turn(deps, NativeLLM(), "generate 40 type 2 diabetes patients", registry=make_registry(rec),
                      router=None, config={"callbacks": [handler]})
    assert rec.calls[0][1]["n"] == 40
    (turn,) = [r for r in handler.runs if r["parent"] is None]
    llm_runs = handler.of("llm")
    assert len(llm_runs) == result.llm_calls >= 1
    assert all(r["parent"] == turn["run_id"] and r["name"] == "synthehr-native-tool-call" for r in llm_runs)
    assert [r["parent"] for r in handler.of("tool")] == [turn["run_id"]]


def test_a_declined_request_is_one_run_that_says_so(deps):
    rec, handler = Recorder(), RecordingHandler()
    llm = ScriptedLLM([])
    result = run_turn(deps, llm, "show me real NHANES patient rows", registry=make_registry(rec), router=None,
                      config={"callbacks": [handler]})
    assert result.declined and llm.calls == [] and rec.calls == []
    (turn,) = handler.runs  # no LLM or tool run: only the turn
    out = handler.ends[turn["run_id"]]
    assert out["declined"] and out["route"]["decided_by"].startswith("declined") and out["calls"] == []


def test_a_turn_inside_a_langchain_runnable_nests_under_it(deps):
    """Called from a LangChain app (a RunnableLambda given its config), the turn is a child of the app's run."""
    from langchain_core.runnables import RunnableLambda

    rec, handler = Recorder(), RecordingHandler()
    llm = ScriptedLLM([step("generate_cohort", {"condition": "copd", "n": 50}), final("Generated 50 patients.")])

    def app(text: str, config: Any) -> str:
        return run_turn(deps, llm, text, registry=make_registry(rec), router=None, config=config).answer

    RunnableLambda(app).invoke("generate 50 copd patients", config={"callbacks": [handler], "tags": ["outer"]})
    (outer,) = [r for r in handler.runs if r["parent"] is None]
    (turn,) = [r for r in handler.of("chain") if r["name"] == "synthehr_turn"]
    assert turn["parent"] == outer["run_id"] and "outer" in turn["tags"]
    assert {r["parent"] for r in handler.of("llm") + handler.of("tool")} == {turn["run_id"]}
