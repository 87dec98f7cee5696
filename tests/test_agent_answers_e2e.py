"""The headline conversation with the real tools (made-up fixture source, tiny training): the answers a
clinician reads are written from the typed results: n, definition, figures, what the source does not
measure, privacy, relative files; follow-ups keep the cohort; a capable model's invented number is caught."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synthehr.agent.answer import repeated_sentences, verify
from synthehr.agent.llm.base import ScriptedLLM
from synthehr.agent.loop import run_turn
from synthehr.tools.registry import default_registry
from tests.test_train_generate import SRC, _no_quality_plots, make_deps  # noqa: F401 - fixture reused

pytestmark = pytest.mark.slow


def step(tool: str, args: dict) -> str:
    import json

    return f"Thought: x\nAction: {tool}\nAction Input: {json.dumps(args)}"


def test_headline_then_follow_ups_read_as_a_clinician_expects(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    registry = default_registry()
    events: list = []
    llm = ScriptedLLM([step("generate_cohort", {"condition": "type 2 diabetes", "n": 300, "source": SRC}),
                       "Thought: done\nFinal Answer: The dataset is not available (not generated)."], name="embedded")
    r = run_turn(deps, llm, f"generate 300 Type 2 diabetes patients with 20 observations from {SRC}",
                 registry=registry, router=None, on_event=events.append)
    a = r.answer
    thoughts = [e.text for e in events if e.kind == "thought"]
    assert thoughts[0].startswith("Generating 300 patients with Type 2 diabetes from Fixture clinic")
    assert "no trained model yet, so training one first" in thoughts[0]
    assert a.startswith("I generated 300 synthetic patients with Type 2 diabetes from Fixture clinic")
    assert "Cohort definition (American Diabetes Association" in a
    assert re.search(r"Key figures: mean age [\d.]+ years; women [\d.]+%; mean HbA1c [\d.]+%", a)
    assert "Not included because Fixture clinic (synthetic test records) does not measure them: " in a
    assert "Fasting plasma glucose" in a and "not available" not in a and "not generated" not in a
    ds = deps.session.last_dataset
    assert f"Files: datasets/{ds}/data.csv, datasets/{ds}/data.parquet" in a and str(deps.workspace.root) not in a
    assert "Privacy: The generator was trained for this request with differential privacy" in a
    assert not repeated_sentences(a) and verify(a, r.steps) == []

    # "make them older": the same cohort, aged 65 or over; the answer says so and reuses the model.
    events.clear()
    llm = ScriptedLLM([step("generate_cohort", {"condition": "type 2 diabetes"}),
                       "Thought: done\nFinal Answer: ok"], name="embedded")
    r2 = run_turn(deps, llm, "make them older", registry=registry, router=None, on_event=events.append)
    assert r2.steps[0]["ok"] and "aged 65 or over" in r2.answer and "I generated 300" in r2.answer
    assert "reusing the trained generator" in [e.text for e in events if e.kind == "thought"][0]

    # "what is their mean HbA1c?" with a capable model that invents a figure: the verifier falls back.
    llm = ScriptedLLM([step("cohort_stats", {"columns": ["hba1c_pct"]}),
                       "Thought: done\nFinal Answer: The mean HbA1c is 6.59%, which is 4.6% above the rest."])
    r3 = run_turn(deps, llm, "what is their mean HbA1c?", registry=registry, router=None)
    assert r3.answer_problems and "numbers no tool reported" in r3.answer_problems[0]
    assert re.search(r"Key figures: mean HbA1c [\d.]+%", r3.answer) and "6.59" not in r3.answer
    assert "hba1c_pct" not in r3.answer and re.search(r"patients with HbA1c [<>≥≤] [\d.]+%", r3.answer)
    assert r3.steps[0]["args"]["dataset"] == "last" and deps.session.last_dataset == r2.steps[0]["data"]["dataset_id"]
