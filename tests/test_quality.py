"""The quality report: metrics in range, memorisation flagged, an honest sample not flagged, no real rows written.

Every record here is made up by `population()`: never NHANES rows.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from synthehr.tools.base import ToolInputError
from synthehr.tools.engines.quality import build_quality_report, cohort_mask, headline, report_for, split_holdout, suppress
from synthehr.tools.store.schema import Column, ColumnType, SourceMeta, SourceSchema
from synthehr.tools.store.workspace import now_iso

C, I, B, K = ColumnType.continuous, ColumnType.integer, ColumnType.binary, ColumnType.categorical
SCHEMA = SourceSchema(
    meta=SourceMeta(name="toy-source", title="Made-up population", publisher="tests", url="https://example.org",
                    licence="CC0", population="made up", years="2026", citation="none"),
    columns=[
        Column(name="age_years", type=I, label="Age", unit="years", lower=18, upper=80),
        Column(name="sex", type=K, label="Sex", categories=["female", "male"]),
        Column(name="smoking_status", type=K, label="Smoking", categories=["never", "former", "current"]),
        Column(name="height_cm", type=C, label="Height", unit="cm", lower=120, upper=220),
        Column(name="weight_kg", type=C, label="Weight", unit="kg", lower=25, upper=300),
        Column(name="bmi_kg_m2", type=C, label="BMI", unit="kg/m2", lower=12, upper=90),
        Column(name="sbp_mmhg", type=C, label="Systolic BP", unit="mmHg", lower=60, upper=260),
        Column(name="dbp_mmhg", type=C, label="Diastolic BP", unit="mmHg", lower=20, upper=160),
        Column(name="hba1c_pct", type=C, label="HbA1c", unit="%", lower=3, upper=20),
        Column(name="diabetes", type=B, label="Diabetes"),
        Column(name="diabetes_age_at_diagnosis", type=I, label="Age at diagnosis", unit="years", lower=0, upper=80),
        Column(name="diabetes_duration_years", type=I, label="Diabetes duration", unit="years", lower=0, upper=80),
    ],
    condition_columns=["diabetes", "sex"],
)
DISTINCT = ["height_cm", "weight_kg", "bmi_kg_m2", "sbp_mmhg", "dbp_mmhg", "hba1c_pct"]
PRIVACY = {"epsilon": 1.0, "delta": 1e-5, "accountant": "prv", "target_epsilon": 1.0, "charges": [{"what": "x"}]}


def population(n: int, seed: int) -> pd.DataFrame:
    """Made-up patients with correlations, mixed types, missing values, and values with many decimals."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 81, n)
    sex = rng.choice(["female", "male"], n)
    height = np.where(sex == "male", rng.normal(176, 7, n), rng.normal(162, 6, n)).clip(125, 215) + rng.random(n) * 1e-3
    bmi = (rng.normal(28, 5, n) + 0.05 * (age - 50)).clip(15, 70)
    weight = bmi * (height / 100) ** 2
    risk = -5 + 0.05 * age + 0.12 * (bmi - 28)
    diabetes = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(int)
    hba1c = np.where(diabetes == 1, rng.normal(7.4, 1.3, n), rng.normal(5.4, 0.45, n)).clip(4, 15)
    sbp = (105 + 0.5 * age + 0.6 * (bmi - 28) + rng.normal(0, 12, n)).clip(85, 220)
    dbp = np.minimum(0.45 * sbp + rng.normal(15, 7, n), sbp - 10).clip(40, None)
    dx_age = np.where(diabetes == 1, np.maximum(18, age - rng.integers(0, 25, n)), np.nan)
    df = pd.DataFrame({
        "age_years": pd.array(age, dtype="Int64"),
        "sex": pd.Categorical(sex, categories=["female", "male"]),
        "smoking_status": pd.Categorical(rng.choice(["never", "former", "current"], n, p=[0.55, 0.25, 0.2]),
                                         categories=["never", "former", "current"]),
        "height_cm": height,
        "weight_kg": weight,
        "bmi_kg_m2": bmi,
        "sbp_mmhg": sbp,
        "dbp_mmhg": dbp,
        "hba1c_pct": hba1c,
        "diabetes": pd.array(diabetes, dtype="Int8"),
        "diabetes_age_at_diagnosis": pd.array(dx_age, dtype="Int64"),
        "diabetes_duration_years": pd.array(np.where(diabetes == 1, age - dx_age, np.nan), dtype="Int64"),
    })
    df.loc[rng.random(n) < 0.04, "hba1c_pct"] = np.nan
    return df


@pytest.fixture(scope="module")
def real() -> tuple[pd.DataFrame, pd.DataFrame]:
    train, holdout = split_holdout(population(900, 1), 1 / 3, seed=5)
    holdout.loc[[3, 7, 11], "sbp_mmhg"] = np.nan  # three missing real values: a small cell
    return train, holdout


@pytest.fixture(scope="module")
def copied(real, tmp_path_factory):
    train, holdout = real
    out = tmp_path_factory.mktemp("copied")
    return build_quality_report(train, holdout, train.copy(), SCHEMA, "diabetes", PRIVACY, out, cohort={"fixed": {"diabetes": 1}},
                                plots=False), out


@pytest.fixture(scope="module")
def honest(real, tmp_path_factory):
    train, holdout = real
    out = tmp_path_factory.mktemp("honest")
    synth = population(600, 99)
    return build_quality_report(train, holdout, synth, SCHEMA, "diabetes", PRIVACY, out, cohort={"fixed": {"diabetes": 1}}), out


def _unit(v) -> None:
    assert v is not None and 0.0 <= v <= 1.0, v


def test_split_is_deterministic_and_disjoint():
    frame = pd.DataFrame({"i": range(100)})
    a_tr, a_ho = split_holdout(frame, 0.2, 7)
    b_tr, b_ho = split_holdout(frame, 0.2, 7)
    assert a_ho["i"].tolist() == b_ho["i"].tolist() and len(a_ho) == 20 and len(a_tr) == 80
    assert not set(a_tr["i"]) & set(a_ho["i"])
    assert split_holdout(frame, 0.2, 8)[1]["i"].tolist() != a_ho["i"].tolist()


def test_metrics_lie_in_their_ranges(honest):
    rep, _ = honest
    f = rep["fidelity"]
    for v in f["columns"].values():
        _unit(v["score"])
    for v in (f["marginal_score"], f["detection_auc"], f["detection_score"], f["correlation"]["similarity"]):
        _unit(v)
    assert 0 <= f["correlation"]["mean_abs_diff"] <= 2
    for m in rep["utility"]["models"].values():
        _unit(m["tstr"])
        _unit(m["trtr"])
    p = rep["privacy"]
    for v in (p["exact_copies"]["rate_train"], p["exact_copies"]["rate_holdout"], p["dcr"]["share_closer_to_train"],
              p["membership_inference"]["auc"], p["dcr"]["synthetic_to_train_median"], p["dcr"]["synthetic_to_holdout_p5"]):
        _unit(v)
    cv = rep["clinical_validity"]
    _unit(cv["bounds"]["share_inside"])
    _unit(cv["cohort"]["synthetic_hit_rate"])
    for r in cv["rules"].values():
        _unit(r["synthetic_violation_share"])
    assert p["accounting"] == {"epsilon": 1.0, "delta": 1e-5, "accountant": "prv", "target_epsilon": 1.0}
    assert rep["summary"]["mia_auc"] == p["membership_inference"]["auc"]


def test_an_honest_independent_sample_is_not_flagged(honest):
    rep, _ = honest
    assert rep["flags"] == []
    p = rep["privacy"]
    assert p["exact_copies"]["rate_train"] == 0.0
    assert abs(p["membership_inference"]["auc"] - 0.5) < 0.1
    assert abs(p["dcr"]["share_closer_to_train"] - 0.5) < 0.1
    assert rep["fidelity"]["detection_auc"] < 0.75 and rep["fidelity"]["marginal_score"] > 0.85
    assert set(rep["clinical_validity"]["rules"]) >= {"sbp_ge_dbp", "duration_le_age", "age_at_diagnosis_le_age",
                                                       "bmi_matches_weight_height"}
    assert all(r["synthetic_violations"] == 0 for r in rep["clinical_validity"]["rules"].values())
    assert "No flags" in headline(rep)


def test_a_copy_of_the_training_data_is_flagged(copied):
    rep, _ = copied
    p = rep["privacy"]
    assert p["exact_copies"]["rate_train"] == 1.0 and p["exact_copies"]["rate_holdout"] == 0.0
    assert p["membership_inference"]["auc"] > 0.9
    assert p["dcr"]["synthetic_to_train_p5"] == 0.0 < p["dcr"]["synthetic_to_holdout_p5"]
    assert any(f.startswith("exact copies of training records: 100.0%") for f in rep["flags"])
    assert any(f.startswith("membership-inference AUC") and "> 0.6" in f for f in rep["flags"])
    assert any(f.startswith("synthetic records lie much closer to training") for f in rep["flags"])


def test_rule_violations_and_out_of_bounds_values_are_flagged(real, tmp_path):
    train, holdout = real
    bad = population(300, 42)
    bad.loc[:59, "dbp_mmhg"] = bad.loc[:59, "sbp_mmhg"] + 5  # 20 % with DBP above SBP
    bad.loc[:29, "bmi_kg_m2"] = 95.0  # outside the public bounds and inconsistent with weight/height
    rep = build_quality_report(train, holdout, bad, SCHEMA, None, {}, tmp_path, plots=False)
    rules = rep["clinical_validity"]["rules"]
    assert rules["sbp_ge_dbp"]["synthetic_violations"] == 60
    assert rules["bmi_matches_weight_height"]["synthetic_violations"] >= 30
    assert rep["clinical_validity"]["bounds"]["columns"]["bmi_kg_m2"]["inside"] == 270
    text = " | ".join(rep["flags"])
    assert "systolic >= diastolic" in text and "inside the public bounds" in text and "no privacy accounting" in text
    assert rep["utility"] is None


def test_cohort_hit_rate_with_card_and_profile_style_rules(real):
    _, holdout = real
    synth = population(400, 3)
    m, skipped = cohort_mask(synth, {"fixed": {"diabetes": 1}, "filters": ["age_years>=40"]}, SCHEMA)
    expected = ((synth["diabetes"] == 1) & (synth["age_years"] >= 40)).fillna(False).to_numpy()
    assert (m == expected).all() and skipped == []
    rules = {"all_of": [{"column": "age_years", "min": 18}],
             "any_of": [{"column": "diabetes", "equals": 1}, {"column": "hba1c_pct", "min": 6.5},
                        {"column": "not_here", "equals": 1}]}
    m, skipped = cohort_mask(synth, rules, SCHEMA)
    expected = ((synth["diabetes"] == 1).fillna(False) | (synth["hba1c_pct"] >= 6.5).fillna(False)).to_numpy()
    assert (m == expected).all() and skipped == ["not_here"]


def test_small_cells_are_suppressed(honest):
    rep, _ = honest
    assert suppress(0) == 0 and suppress(3) == "<10" and suppress(10) == 10
    sbp = rep["fidelity"]["missingness"]["columns"]["sbp_mmhg"]
    assert sbp["real_missing"] == "<10" and sbp["real_rate"] is None
    assert rep["fidelity"]["missingness"]["columns"]["bmi_kg_m2"]["real_missing"] == 0


def test_files_are_written(honest):
    rep, out = honest
    assert {"quality.json", "quality.md", "quality_marginals.png", "quality_correlation_diff.png", "quality_dcr.png"} <= set(rep["files"])
    for name in rep["files"]:
        p = out / name
        assert p.is_file() and p.stat().st_size > 500
        if name.endswith(".png"):
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "quality.json").read_text())["flags"] == rep["flags"]
    md = (out / "quality.md").read_text()
    assert "## Privacy" in md and "membership" in md.lower() and "TSTR" in md


def test_the_report_names_reversed_and_undetermined_signs(honest):
    from synthehr.tools.engines.quality import render_markdown

    rep, _ = honest
    signs = {"agreement": 0.5, "reversed": ["bmi_kg_m2"], "undetermined": ["pulse_bpm"], "top": [],
             "marginal": {"top": [], "reversed": ["age_years"]}}
    md = render_markdown({**rep, "structure": {**(rep.get("structure") or {}), "predictor_signs": signs}})
    assert "Top predictors with a reversed sign: bmi_kg_m2" in md
    assert "Top associations with the label reversed in the synthetic data: age_years" in md
    assert "do not determine (Wald |z| < 1.96; not counted): pulse_bpm" in md


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"-?\d+\.\d+", text))


@pytest.mark.parametrize("which", ["copied", "honest"])
def test_report_files_contain_no_training_row(which, request, real):
    rep, out = request.getfixturevalue(which)
    train, holdout = real
    text = (out / "quality.json").read_text() + (out / "quality.md").read_text()
    found = _numbers(text)
    for frame in (train, holdout):
        worst = 0
        for row in frame[DISTINCT].itertuples(index=False):
            vals = [v for v in row if v == v]
            hits = sum(any(fmt.format(v) in found for fmt in ("{!r}", "{:.4f}", "{:.3f}")) for v in vals)
            worst = max(worst, hits)
            # no two consecutive values of a row, as a CSV or table would print them
            for a, b in zip(vals, vals[1:]):
                for sep in (",", ", ", " | ", "\t"):
                    assert f"{a!r}{sep}{b!r}" not in text and f"{a:.2f}{sep}{b:.2f}" not in text
        assert worst <= 1, "a real record's values appear in the report"


def _model_with_report(deps, tmp_path) -> str:
    train, holdout = split_holdout(population(300, 8), 0.5, seed=1)
    mdir = deps.workspace.models_dir / "m-test"
    build_quality_report(train, holdout, population(200, 9), SCHEMA, "diabetes", PRIVACY, mdir, plots=False)
    deps.workspace.insert("models", {"id": "m-test", "source": "toy-source", "created_at": now_iso(), "path": str(mdir),
                                     "epsilon": 1.0, "delta": 1e-5, "accountant": "prv", "seed": 1})
    d = deps.workspace.datasets_dir / "ds-q"
    d.mkdir(parents=True)
    deps.workspace.insert("datasets", {"id": "ds-q", "model_id": "m-test", "source": "toy-source", "n_rows": 1, "dir": str(d),
                                       "created_at": now_iso(), "session": "default"})
    return "m-test"


def test_report_for_a_model_or_its_data_set(deps, tmp_path):
    deps.settings.privacy.custodian_reports = True  # the user is the custodian of toy-source
    _model_with_report(deps, tmp_path)
    by_model = report_for(deps, "m-test")
    by_ds = report_for(deps, "ds-q")
    by_last = report_for(deps, "last")
    assert by_model["model_id"] == by_ds["model_id"] == by_last["model_id"] == "m-test"
    assert by_ds["dataset_id"] == "ds-q" and by_model["built"] is False
    assert by_model["report"]["summary"]["epsilon"] == 1.0 and by_model["text"].startswith("Quality: epsilon 1")
    with pytest.raises(ToolInputError, match="m-test"):
        report_for(deps, "m-unknown")
    with pytest.raises(ToolInputError, match="real data source"):
        report_for(deps, "nhanes-2017-2018")


def test_cli_report_table_json_and_error(deps, tmp_path, workspace_dir):
    import os
    import subprocess
    import sys

    _model_with_report(deps, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHEHR_")}
    env.update(SYNTHEHR_HOME=str(workspace_dir), COLUMNS="200", SYNTHEHR_PRIVACY__CUSTODIAN_REPORTS="true")
    table = subprocess.run([sys.executable, "-m", "synthehr", "report", "ds-q"], capture_output=True, text=True, env=env, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "membership-inference AUC" in table.stdout and "quality.md" in table.stdout
    js = subprocess.run([sys.executable, "-m", "synthehr", "report", "m-test", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert js.returncode == 0 and json.loads(js.stdout)["report"]["summary"]["epsilon"] == 1.0
    bad = subprocess.run([sys.executable, "-m", "synthehr", "report", "m-nope"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown model or data set" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_training_writes_the_report_and_report_for_rebuilds_it_identically(deps, tmp_path):
    """End to end with the DP-GAN: train_generator's hook writes the report; a rebuild recovers the same holdout."""
    import yaml

    from synthehr.tools.train_generator import train_model

    data = tmp_path / "toy.csv"
    population(400, 21).to_csv(data, index=False)
    meta = tmp_path / "meta.yaml"
    meta.write_text(yaml.safe_dump({"meta": SCHEMA.meta.model_dump(), "condition_columns": ["diabetes", "sex"],
                                    "columns": [c.model_dump(mode="json", exclude_none=True) for c in SCHEMA.columns]}))
    deps.catalog.register(data, meta)
    deps.settings.privacy.custodian_reports = True
    out = train_model(deps, "toy-source", 1.0, conditions=["diabetes", "sex"], epochs=1, seed=3)
    model_id = out["summary"]["model_id"]
    first = report_for(deps, model_id)
    assert first["built"] is False and first["report"]["summary"]["epsilon"] <= 1.0
    assert first["report"]["utility"]["label"] == "diabetes"
    (deps.workspace.models_dir / model_id / "quality.json").unlink()
    again = report_for(deps, model_id)
    assert again["built"] is True
    keep = ("exact_copy_rate", "mia_auc", "dcr_share_closer_to_train", "marginal_score", "epsilon")
    assert {k: again["report"]["summary"][k] for k in keep} == {k: first["report"]["summary"][k] for k in keep}


def test_utility_leaves_out_columns_that_define_the_label():
    import numpy as np
    import pandas as pd

    from synthehr.tools.engines.quality import utility
    from synthehr.tools.store.schema import Column, ColumnType

    rng = np.random.default_rng(0)

    def frame(n):
        x = rng.uniform(3, 12, n)
        return pd.DataFrame({"a1c": x, "noise": rng.uniform(0, 1, n), "label": (x >= 6.5).astype(int)})

    cols = [Column(name="a1c", type=ColumnType.continuous, lower=3, upper=12),
            Column(name="noise", type=ColumnType.continuous, lower=0, upper=1),
            Column(name="label", type=ColumnType.binary)]
    from threadpoolctl import threadpool_limits

    train, holdout, synth = frame(400), frame(400), frame(400)
    with threadpool_limits(1):  # as build_quality_report runs it; oversubscription is slow on small CPUs
        leaky = utility(train, holdout, synth, cols, "label", 0, 5000)
        fair = utility(train, holdout, synth, cols, "label", 0, 5000, exclude=["a1c"])
    assert leaky["models"]["logistic_regression"]["trtr"] > 0.95
    assert fair["excluded_features"] == ["a1c"]
    assert fair["models"]["logistic_regression"]["trtr"] < 0.7
