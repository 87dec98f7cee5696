"""`synthehr ask`, `chat` and `eval agent` with the scripted fake backend (in process, test tools)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_agent import HEADLINE, Recorder, final, make_registry, step


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from synthehr.agent import loop as agent_mod
    from synthehr.agent.cli import main as cli_mod

    names = {c.name for c in cli_mod.app.registered_commands}
    if "ask" not in names:
        cli_mod._load_feature_commands()
    rec = Recorder()
    monkeypatch.setattr(agent_mod, "_default_registry", lambda: make_registry(rec))
    monkeypatch.setenv("SYNTHEHR_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("SYNTHEHR_LLM__BACKEND", "fake")
    script = tmp_path / "script.json"
    monkeypatch.setenv("SYNTHEHR_LLM__MODEL", str(script))
    cli_mod.CTX.config = None

    def run(args: list[str], replies: list[str], input: str | None = None) -> Any:
        script.write_text(json.dumps(replies))
        return CliRunner(env={"COLUMNS": "400"}).invoke(cli_mod.app, args, input=input, catch_exceptions=False)

    run.rec = rec  # type: ignore[attr-defined]
    return run


def test_ask_json_prints_steps_answer_and_files(cli):
    replies = [step("generate_cohort", {"condition": "type 2 diabetes", "n": 2000, "n_observations": 20,
                                        "population": "US"}),
               final("Generated 2000 Type 2 diabetes patients; mean HbA1c 7.4 %. Sources: NHANES 2017-2018.")]
    r = cli(["ask", HEADLINE, "--json", "--no-router", "--session", "s1"], replies)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["steps"][0]["tool"] == "generate_cohort" and out["steps"][0]["args"]["n"] == 2000
    assert "Generated 2000" in out["steps"][0]["observation"]
    assert len(out["files"]) == 1 and out["files"][0].endswith("ds-20261126-120000-000001/data.csv")
    assert "NHANES" in out["answer"]
    # A second `ask` in the same session is a follow-up on the same cohort.
    r = cli(["ask", "what is their mean HbA1c?", "--json", "--no-router", "--session", "s1"],
            [step("cohort_stats", {}), final("Mean HbA1c 7.4 %.")])
    out = json.loads(r.stdout)
    assert out["steps"][0]["args"]["dataset"] == "last"
    assert cli.rec.calls[-1][0] == "cohort_stats"


def test_ask_shows_steps_live(cli):
    replies = [step("explain_provenance", {"question": "x"}, thought="They ask for sources."),
               final("Based on NHANES 2017-2018 [1] and ADA [2].")]
    r = cli(["ask", "which sources is this based on?", "--no-router"], replies)
    assert r.exit_code == 0, r.output
    # The progress line says what the agent does (the tool's description), not the model's raw thought.
    assert "explain_provenance" in r.stdout and "NHANES" in r.stdout
    assert "Which real-world sources and guidelines" in r.stdout


def test_ask_declines_over_the_limit(cli):
    r = cli(["ask", "generate 10 million patients", "--json", "--no-router"], [])
    out = json.loads(r.stdout)
    assert out["declined"] and out["steps"] == [] and "100,000" in out["answer"]


def test_chat_reads_piped_stdin_and_keeps_history(cli):
    replies = [step("generate_cohort", {"condition": "type 2 diabetes", "n": 300}), final("Generated 300 patients."),
               step("generate_cohort", {"condition": "x"}), final("Generated 300 older patients.")]
    r = cli(["chat", "--json", "--no-router", "--session", "c1"], replies,
            input="generate 300 type 2 diabetes patients\nmake them older\n")
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert [x["request"] for x in lines] == ["generate 300 type 2 diabetes patients", "make them older"]
    second = lines[1]["steps"][0]["args"]
    assert second["n"] == 300 and second["filters"]["age_min"] >= 60


def test_chat_plain_output(cli):
    r = cli(["chat", "--no-router"], [final("Hello! I can generate synthetic cohorts.")], input="hello there\n")
    assert r.exit_code == 0, r.output
    assert "hello there" in r.stdout and "synthetic cohorts" in r.stdout


def test_eval_agent_help_says_tools_are_stand_ins(cli):
    r = cli(["eval", "agent", "--help"], [])
    assert r.exit_code == 0
    assert "stand-ins" in r.stdout and "nothing is trained" in r.stdout


def test_ask_prints_readable_text_with_relative_paths_and_one_files_line(cli, tmp_path):
    """The fake tool's observation holds the absolute path; the terminal shows it relative to the workspace.
    The model's answer names only "data.csv", so the full relative path follows in one "files:" line."""
    replies = [step("generate_cohort", {"condition": "type 2 diabetes", "n": 2000}),
               final("Generated 2000 patients, see data.csv.")]
    r = cli(["ask", HEADLINE, "--no-router"], replies)
    assert r.exit_code == 0, r.output
    out = r.stdout
    ws = str(tmp_path / "ws")
    assert ws not in out.replace("\n", "")
    assert "datasets/ds-20261126-120000-000001/data.csv" in out
    assert out.count("files:") == 1 and "file: " not in out and "tool output" not in out
