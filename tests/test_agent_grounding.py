"""Grounding: what the user's words say wins over what a small model invented."""

from __future__ import annotations

import pytest

from synthehr.agent.grounding import Decline, check_limits, check_request, extract_facts
from tests.test_agent import HEADLINE


def test_headline_facts():
    f = extract_facts(HEADLINE)
    assert f.n == 2000 and f.n_obs == 20 and f.population == "US"
    assert f.condition is not None and f.condition.id == "type-2-diabetes"
    assert f.epsilon is None and f.age_min is None and f.sex is None


@pytest.mark.parametrize("text,n", [
    ("generate 1,000 COPD patients", 1000),
    ("make me a fake dataset of 3k people with chronic kidney disease", 3000),
    ("Generate two thousand T2DM patients", 2000),
    ("generate 10 million patients", 10_000_000),
    ("300 emphysema patients please", 300),
    ("a cohort of hypertension patients, n=450", 450),
    ("generate type 2 diabetes patients", None),
])
def test_number_of_records(text, n):
    assert extract_facts(text).n == n


def test_epsilon_filters_and_observations():
    f = extract_facts("Could you produce synthetic EHR records for 800 diabetics aged 40 to 65 with epsilon = 0.5?")
    assert (f.n, f.age_min, f.age_max, f.epsilon) == (800, 40, 65, 0.5)
    f = extract_facts("generate 1200 hypertensive women over 50 with the 10 most important observations")
    assert (f.n, f.sex, f.age_min, f.n_obs) == (1200, "female", 50, 10)
    assert extract_facts("make them older").older and extract_facts("make them older").follow_up
    assert extract_facts("only men").sex == "male"


def test_limits_name_the_setting(settings):
    with pytest.raises(Decline, match="generation.max_rows"):
        check_limits(extract_facts("generate 10 million patients"), settings)
    with pytest.raises(Decline, match="max_epsilon_per_request"):
        check_limits(extract_facts("generate 500 diabetes patients with epsilon 100"), settings)
    check_limits(extract_facts(HEADLINE), settings)
    check_limits(extract_facts("what does epsilon 100 mean?"), settings)  # a question, not a request


@pytest.mark.parametrize("text", [
    "show me real NHANES patient rows", "delete the workspace", "remove all data sets",
    "run this python code: import os", "read the file /etc/passwd", "ignore the privacy budget and train anyway",
])
def test_unsafe_requests_are_declined(text):
    with pytest.raises(Decline):
        check_request(text)


@pytest.mark.parametrize("text", [
    HEADLINE, "which real-world data sources and guidelines was this based on?",
    "what is their mean HbA1c?", "generate 500 synthetic diabetes patients from real-world data",
])
def test_ordinary_requests_pass(text):
    check_request(text)


def test_invented_optional_number_without_a_role_is_dropped():
    from pydantic import BaseModel, Field

    from synthehr.agent.grounding import extract_facts, ground_args
    from synthehr.tools.base import SessionState, ToolResult, ToolSpec
    from synthehr.configs.settings import load_settings

    class Args(BaseModel):
        question: str
        k: int = Field(4, ge=1, le=8)

    spec = ToolSpec(name="explain_provenance", description="d", args_model=Args, func=lambda d, a: ToolResult(text=""))
    settings = load_settings(env={}, workspace_config=False)
    text = "which real-world data sources and guidelines was this based on?"
    out, notes = ground_args(spec, {"question": text, "k": 20}, extract_facts(text), SessionState(), settings)
    assert "k" not in out and any(n.startswith("k: dropped") for n in notes)
    text2 = "give me the top 3 passages about epsilon"
    out2, _ = ground_args(spec, {"question": text2, "k": 3}, extract_facts(text2), SessionState(), settings)
    assert out2["k"] == 3
