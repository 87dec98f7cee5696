"""The embedding router as a fallback for the model's tool choice (fast: a bag-of-words embedder)."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from synthehr.agent.loop import run_turn
from synthehr.agent.llm.base import ScriptedLLM
from synthehr.agent.router import Router, split_clauses
from tests.test_agent import HEADLINE, Recorder, final, make_registry, step


def bow_embed(texts):
    """A deterministic bag-of-words embedding (hashing trick), normalised."""
    out = np.zeros((len(texts), 512), dtype="float32")
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z0-9]+", t.lower()):
            out[i, zlib.crc32(w.encode()) % 512] += 1.0
        n = np.linalg.norm(out[i])
        if n:
            out[i] /= n
    return out


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def registry(rec):
    return make_registry(rec)


@pytest.fixture
def router(registry):
    return Router(bow_embed, registry, min_score=0.3, min_margin=0.05)


def test_router_routes_typical_requests(router):
    assert router.route("what is their mean HbA1c?").tool == "cohort_stats"
    assert router.route("where did this data come from?").tool == "explain_provenance"
    assert router.route("generate 500 diabetes patients").tool == "generate_cohort"
    r = router.route("show me real patient rows")
    assert r.tool == "none"


def test_split_clauses_of_a_two_intent_request():
    assert split_clauses("generate 500 heart failure patients and tell me which guidelines define the cohort") == [
        "generate 500 heart failure patients", "tell me which guidelines define the cohort"]
    assert split_clauses(HEADLINE) == [HEADLINE]


def test_router_replaces_a_tool_choice_that_contradicts_it(deps, registry, rec, router):
    script = [step("explain_provenance", {"question": "x"}), final("The mean HbA1c is 7.4 %.")]
    result = run_turn(deps, ScriptedLLM(script), "what is their mean HbA1c?", registry=registry, router=router)
    assert [c[0] for c in rec.calls] == ["cohort_stats"]
    assert result.steps[0]["source"] == "router"


def test_router_acts_when_the_model_answers_without_the_needed_tool(deps, registry, rec, router):
    script = [final("Sure, here are 500 patients."), final("I generated 500 Type 2 diabetes patients.")]
    result = run_turn(deps, ScriptedLLM(script), "generate 500 type 2 diabetes patients", registry=registry,
                      router=router)
    assert rec.calls and rec.calls[0][0] == "generate_cohort" and rec.calls[0][1]["n"] == 500


def test_router_falls_back_after_repeated_invalid_tool_names(deps, registry, rec, router):
    script = [step("make_people", {}), step("make_people", {}), final("Generated 500 patients.")]
    result = run_turn(deps, ScriptedLLM(script), "generate 500 type 2 diabetes patients", registry=registry,
                      router=router)
    assert result.steps[0]["error"] == "unknown_tool"
    assert rec.calls == [("generate_cohort", {"condition": "Type 2 diabetes", "n": 500})]


def test_two_intents_run_both_tools(deps, registry, rec, router):
    text = "generate 500 type 2 diabetes patients and tell me which sources and guidelines it was based on"
    script = [step("generate_cohort", {"condition": "type 2 diabetes", "n": 500}),
              final("Generated 500 patients."),  # the model forgets the second intent
              final("Generated 500 patients; based on NHANES 2017-2018 and ADA Standards of Care.")]
    result = run_turn(deps, ScriptedLLM(script), text, registry=registry, router=router)
    assert [c[0] for c in rec.calls] == ["generate_cohort", "explain_provenance"]
    assert rec.calls[1][1]["dataset"] == "last"
