"""A generated cohort compared with its source's DP-released figures (issue 13): computed from what the model
released only (post-processing: nothing charged, no real row read), carried in the typed result, stated by the
answer writer and accepted by the verifier. Made-up records only (tests/_dpgan_fixture.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests._dpgan_fixture import FIXTURE_SCHEMA, fast_settings, fixture_frame
from synthehr.tools.engines.dpgan.encoding import TableEncoder
from synthehr.tools.engines.source_figures import compare_with_source, dp_source_figures


def _released_model() -> Any:
    """A model as its releases describe it (no generator, no records): a joint histogram of diabetes x sex and
    per-column tables by diabetes, with numbers chosen so the expected figures are exact."""
    enc = TableEncoder(FIXTURE_SCHEMA, ["diabetes", "sex"], 0)
    hist = np.array([[300.0, 300.0],   # diabetes 0: female, male
                     [60.0, 40.0]])    # diabetes 1: 60 % female
    # HbA1c, public range 3-16 in 2 bins (centres 6.25 and 12.75), then the missing cell
    hba1c = [[90.0, 10.0, 5.0],   # diabetes 0: mean 0.9*6.25 + 0.1*12.75 = 6.9
             [50.0, 50.0, 0.0]]   # diabetes 1: mean 9.5
    race = [[50.0, 30.0, 20.0], [20.0, 20.0, 60.0]]
    released = {"by": "diabetes", "labels": ["0", "1"], "mechanism": "gaussian-marginals", "columns": {
        "hba1c_pct": {"kind": "numeric", "lower": 3.0, "upper": 16.0, "bins": 2, "has_missing": True, "counts": hba1c},
        "race_ethnicity": {"kind": "discrete", "categories": ["A", "B", "C"], "counts": race}}}
    return SimpleNamespace(encoder=enc, cond_hist=hist, released_marginals=released)


def test_source_figures_come_from_the_released_tables_of_the_cohorts_cells():
    src = dp_source_figures(_released_model(), {"diabetes": 1})
    assert src["shares"]["sex"] == pytest.approx({"female": 0.6, "male": 0.4})
    assert src["shares"]["race_ethnicity"] == pytest.approx({"A": 0.2, "B": 0.2, "C": 0.6})
    assert src["means"]["hba1c_pct"]["value"] == pytest.approx(9.5) and src["means"]["hba1c_pct"]["bin_width"] == 6.5
    assert "diabetes" not in src["shares"]  # fixed by the cohort: nothing to compare
    # Nothing fixed: the rows are mixed by their DP shares (600 : 100).
    whole = dp_source_figures(_released_model(), {})
    assert whole["means"]["hba1c_pct"]["value"] == pytest.approx((600 * 6.9 + 100 * 9.5) / 700)
    assert whole["shares"]["sex"]["female"] == pytest.approx(360 / 700)


def test_a_conditioning_mix_the_noise_emptied_is_said_to_be_too_noisy():
    model = _released_model()
    model.cond_hist = np.array([[300.0, 300.0], [0.0, 0.0]])  # no DP mass left in the diabetes == 1 cells
    src = dp_source_figures(model, {"diabetes": 1})
    assert "sex" not in src["shares"] and "sex" in src["too_noisy"]


def test_comparison_reports_gaps_in_points_and_leaves_out_what_the_request_set():
    src = dp_source_figures(_released_model(), {"diabetes": 1})
    frame = pd.DataFrame({"sex": ["female"] * 55 + ["male"] * 45, "race_ethnicity": ["A"] * 20 + ["B"] * 25 + ["C"] * 55,
                          "hba1c_pct": [9.0] * 100, "age_years": [60] * 100})
    out = compare_with_source(frame, src, mix_columns=["sex", "race_ethnicity"], mean_columns=["hba1c_pct", "bmi_kg_m2"])
    assert out["mix"]["sex"]["max_gap_points"] == pytest.approx(5.0)
    assert out["mix"]["race_ethnicity"]["max_gap_points"] == pytest.approx(5.0)
    assert out["means"] == {"hba1c_pct": {"synthetic": 9.0, "source_dp": 9.5, "bin_width": 6.5}}  # no BMI released
    skipped = compare_with_source(frame, src, mix_columns=["sex"], mean_columns=["hba1c_pct"], skip=["sex"])
    assert "sex" not in skipped["mix"] and skipped["skipped"] == ["sex"]


# ---- with a trained model and the tool ----------------------------------------------------------------
def test_a_trained_model_keeps_its_released_tables_and_they_estimate_the_cohort(tmp_path: Path):
    """The released per-column tables survive save/load; the HbA1c estimate for the diabetes cells is well above
    the one for the others (made-up data: about 7.8 % vs 5.4 %), from the DP tables alone."""
    from synthehr.tools.engines.dpgan.model import TrainedGenerator
    from synthehr.tools.engines.dpgan.train import train_dpgan

    model = train_dpgan(fixture_frame(3000), FIXTURE_SCHEMA, target_epsilon=8.0, target_delta=1e-5,
                        conditions=["diabetes", "sex"], seed=1, settings=fast_settings(epochs=1))
    rel = model.released_marginals
    assert rel["by"] == "diabetes" and rel["labels"] == ["0", "1"]
    assert rel["columns"]["hba1c_pct"]["kind"] == "numeric" and len(rel["columns"]["hba1c_pct"]["counts"]) == 2
    loaded = TrainedGenerator.load(model.save(tmp_path / "m"))
    assert loaded.released_marginals == json.loads(json.dumps(rel))
    diab = dp_source_figures(loaded, {"diabetes": 1})["means"]["hba1c_pct"]["value"]
    other = dp_source_figures(loaded, {"diabetes": 0})["means"]["hba1c_pct"]["value"]
    assert diab > other + 1.0, (diab, other)


def _deps(tmp_path: Path) -> Any:
    """A workspace with the fixture source at 3,000 made-up records (enough for the DP tables to carry signal at
    epsilon 8; at the tiny sizes of other tests they are all noise, which test_noisy_tables_are_said_so covers)."""
    from tests._dpgan_fixture import write_source
    from tests.test_train_generate import FAST
    from synthehr.configs.settings import load_settings
    from synthehr.tools.deps import build_deps

    deps = build_deps(settings=load_settings(env={"SYNTHEHR_HOME": str(tmp_path / "ws"), **FAST}))
    data, meta = write_source(tmp_path / "src", n=3000)
    deps.catalog.register(data, meta)
    return deps


def test_generated_cohort_states_its_comparison_with_the_source_at_no_privacy_cost(tmp_path: Path, monkeypatch):
    from synthehr.agent.answer import verify, write_answer
    from synthehr.tools.generate_cohort import GenerateCohortArgs, find_model, generate_cohort, source_comparison
    from tests.test_train_generate import SRC

    import synthehr.tools.train_generator as tg

    monkeypatch.setattr(tg, "_quality_hook", lambda *a, **k: {"called": True})  # the custodian report: not here
    deps = _deps(tmp_path)
    first = generate_cohort(deps, GenerateCohortArgs(condition="Type 2 Diabetes", n=200, source=SRC, seed=3,
                                                     epsilon=8.0))
    ledger = deps.workspace.ledger(SRC)
    spent = deps.workspace.spent(SRC)

    res = generate_cohort(deps, GenerateCohortArgs(condition="Type 2 Diabetes", n=300, source=SRC, seed=4, epsilon=8.0))
    assert res.data["trained_new_model"] is False and deps.workspace.spent(SRC) == spent  # no new charge
    comp = res.data["source_comparison"]
    assert comp["privacy_cost"].startswith("none") and {"sex", "race_ethnicity", "age_years"} <= set(comp["mix"])
    assert comp["too_noisy"] == []
    assert {"mean_age_years", "pct_female", "mean_hba1c_pct"} <= set(comp["figures"])
    figs = {f.label: f for f in res.figures}
    assert figs["mean HbA1c"].reference == comp["figures"]["mean_hba1c_pct"]
    assert figs["mean HbA1c"].reference_label == "source (DP estimate)"
    assert any("privacy-protected (DP) figures" in s and "race/ethnicity" in s for s in res.statements)
    assert "DP-released figures (estimate): mean age" in res.text  # what a capable model sees, to phrase it
    # The shareable data card carries the same cohort-vs-source comparison (issue 11: cohort fidelity on the card).
    card = json.loads(Path(res.data["files"]["card_json"]).read_text())
    assert card["cohort_fidelity"]["figures"] == comp["figures"]
    md = Path(res.data["files"]["card_md"]).read_text()
    assert "## Cohort vs the source (DP-released figures)" in md and "mean hba1c_pct" in md

    # Recomputing the comparison reads the model's releases only: the ledger does not move.
    model = find_model(deps, SRC, first.data["card"]["model"]["conditions"], None)[1]
    csv = pd.read_csv(res.data["files"]["csv"])
    again = source_comparison(model, csv, {"diabetes": 1}, [])
    assert again["figures"] == comp["figures"]
    assert deps.workspace.spent(SRC) == spent and deps.workspace.ledger(SRC) == ledger

    # The answer says it in plain words; the verifier accepts those numbers (tool-reported).
    step = {"tool": "generate_cohort", "ok": True, "args": {"condition": "Type 2 Diabetes", "n": 300},
            "observation": res.text, "files": res.files, "data": json.loads(json.dumps(res.data, default=str)),
            "result": json.loads(json.dumps(res.typed()))}
    answer = write_answer([step], root=deps.workspace.root)
    assert "in the source (DP estimate)" in answer and "privacy-protected (DP) figures" in answer
    assert verify(answer, [step]) == []
    ref = comp["figures"]["mean_hba1c_pct"]
    model_wording = (f"I generated 300 synthetic patients with type 2 diabetes. Their mean HbA1c is "
                     f"{res.data['stats']['mean_hba1c_pct']}%, against {ref}% in the source's privacy-protected figures.")
    assert verify(model_wording, [step]) == []

    # A filter the request sets is not compared with the whole source as if it were a mismatch.
    older = generate_cohort(deps, GenerateCohortArgs(condition="Type 2 Diabetes", n=100, source=SRC, seed=5,
                                                     epsilon=8.0, filters=["age_years>=60"]))
    oc = older.data["source_comparison"]
    assert "age_years" not in oc["mix"] and "mean_age_years" not in oc["figures"] and oc["filtered"]
    assert deps.workspace.spent(SRC) == spent



def test_noisy_tables_are_said_so_not_compared(tmp_path: Path, monkeypatch):
    """400 records at epsilon 1: the per-column tables of the diabetes rows are swamped by noise. The answer
    says so instead of comparing with a figure that describes nobody. The sex mix comes from the DP joint of
    the conditioning columns: compared when that joint has mass in the diabetes cells (most trainings), said
    to be too noisy when the noise emptied them; never silently dropped. (The noise is secure, so which case
    a run meets is not reproducible.)"""
    from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort
    from tests.test_train_generate import SRC, make_deps

    import synthehr.tools.train_generator as tg

    monkeypatch.setattr(tg, "_quality_hook", lambda *a, **k: {"called": True})
    deps = make_deps(tmp_path)
    res = generate_cohort(deps, GenerateCohortArgs(condition="Type 2 Diabetes", n=100, source=SRC, seed=3))
    comp = res.data["source_comparison"]
    noisy = set(comp["too_noisy"])
    assert ("sex" in comp["mix"] and "pct_female" in comp["figures"]) or ("sex" in noisy and not comp["figures"])
    assert noisy and not noisy & set(comp["means"]) and not noisy & set(comp["mix"])
    assert any("too noisy at this privacy level" in s for s in res.statements)
