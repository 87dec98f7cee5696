"""End to end with the embedded model, the packaged router and the real tools (slow: trains a small DP-GAN)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_agent import HEADLINE

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(settings):
    from synthehr.agent.llm.factory import LLMUnavailable, create_backend

    try:
        return create_backend(settings.llm)
    except LLMUnavailable as exc:
        pytest.skip(str(exc))


def test_headline_request_end_to_end_with_the_embedded_model(deps, embedded):
    import pandas as pd

    from synthehr.agent.loop import run_turn

    deps.settings.training.epochs = 2  # a quick generator; the privacy accounting is the same
    result = run_turn(deps, embedded, HEADLINE)
    gen = [s for s in result.steps if s.get("tool") == "generate_cohort" and s.get("ok")]
    assert gen, result.steps
    args = gen[0]["args"]
    assert args["n"] == 2000 and args["observations"] == 20 and args["population"] == "US"
    assert "diabetes" in args["condition"].lower()
    csv = next(Path(f) for f in result.files if f.endswith(".csv"))
    assert csv.is_file() and deps.workspace.contains(csv)
    frame = pd.read_csv(csv)
    assert len(frame) == 2000
    card = json.loads((csv.parent / "card.json").read_text())
    assert card["condition"]["id"] == "type-2-diabetes" and card["n_rows"] == 2000
    assert card["cohort"] is not None and card["source"]["name"] == "nhanes-2017-2018"
    assert "NHANES" in result.answer and csv.name in result.answer
    # The follow-up in the same session is answered from the same data set.
    stats = run_turn(deps, embedded, "what is their mean HbA1c?")
    st = [s for s in stats.steps if s.get("tool") == "cohort_stats" and s.get("ok")]
    assert st and st[0]["args"]["dataset"] == "last"


def test_packaged_router_routes_offline():
    from synthehr.agent.router import default_router
    from synthehr.tools.registry import default_registry

    router = default_router(default_registry())
    assert router is not None
    assert router.route("what is their mean HbA1c?").tool == "cohort_stats"
    assert router.route("which real-world data sources and guidelines was this based on?").tool == "explain_provenance"
    assert router.route(HEADLINE).tool == "generate_cohort"
    assert router.route("what is the capital of France?").tool == "none"
    plan = router.plan("generate 500 heart failure patients and tell me which guidelines define the cohort")
    assert [r.tool for r in plan] == ["generate_cohort", "explain_provenance"]
