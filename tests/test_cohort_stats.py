"""cohort_stats: statistics of synthetic data sets, checked against hand-computed values (made-up fixtures only)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from synthehr.tools.engines import stats as se
from synthehr.tools.base import ToolInputError
from synthehr.tools.cohort_stats import SPEC, CohortStatsArgs, cohort_stats
from synthehr.tools.store.workspace import now_iso

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Eight made-up patients. hba1c non-missing: 6, 6.5, 7, 7.5, 8, 9, 10 (sorted).
FIXTURE = {
    "age_years": [30, 50, 70, 40, 66, 45, 20, 80],
    "sex": ["female", "male", "female", "female", "male", "male", "female", "female"],
    "hba1c_pct": [6.0, 7.0, 8.0, 9.0, 10.0, None, 6.5, 7.5],
    "bmi_kg_m2": [25.0, 31.0, 28.0, 35.0, 22.0, 30.0, 40.0, 27.0],
    "sbp_mmhg": [120.0, 135.0, 128.0, 150.0, 110.0, 125.0, 129.0, 131.0],
    "dbp_mmhg": [70.0, 75.0, 82.0, 95.0, 60.0, 79.0, 80.0, 70.0],
    "insulin_now": [1, 0, 1, 0, 0, 1, None, 0],
    "smoking_status": ["never", "former", "never", "current", "never", "former", "never", None],
}


def _frame() -> pd.DataFrame:
    df = pd.DataFrame(FIXTURE)
    df["age_years"] = df["age_years"].astype("Int64")
    df["sex"] = df["sex"].astype(pd.CategoricalDtype(["female", "male"]))
    df["insulin_now"] = pd.array(FIXTURE["insulin_now"], dtype="Int8")
    df["smoking_status"] = df["smoking_status"].astype(pd.CategoricalDtype(["never", "former", "current"]))
    return df


def add_dataset(deps, frame: pd.DataFrame, ds_id: str = "ds-fixture", condition: str | None = "type-2-diabetes",
                session: str = "default") -> Path:
    d = deps.workspace.datasets_dir / ds_id
    d.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(d / "data.parquet", index=False)
    card = {"dataset_id": ds_id, "condition": {"id": condition} if condition else {}, "n_rows": len(frame)}
    (d / "card.json").write_text(json.dumps(card))
    deps.workspace.insert("datasets", {"id": ds_id, "source": "nhanes-2017-2018", "condition": condition, "n_rows": len(frame),
                                       "dir": str(d), "created_at": now_iso(), "session": session, "card_json": card})
    return d


@pytest.fixture
def ds(deps):
    add_dataset(deps, _frame())
    return deps


def run(deps, **kw):
    return cohort_stats(deps, CohortStatsArgs(**kw))


# ---- the engine ---------------------------------------------------------------------------------
def test_numeric_summary_matches_hand_computed_values():
    s = se.numeric_summary(pd.Series(FIXTURE["hba1c_pct"], dtype=float))
    assert s["n"] == 7 and s["missing"] == 1
    assert s["mean"] == pytest.approx(54 / 7)
    assert s["sd"] == pytest.approx(1.409998311, rel=1e-8)  # sqrt(11.928571 / 6)
    assert s["median"] == pytest.approx(7.5)
    assert s["q1"] == pytest.approx(6.75) and s["q3"] == pytest.approx(8.5) and s["iqr"] == pytest.approx(1.75)
    assert s["min"] == 6.0 and s["max"] == 10.0


def test_proportions_and_binary_shares():
    df = _frame()
    c = se.categorical_summary(df["sex"])
    assert c["counts"] == {"female": 5, "male": 3} and c["proportions"]["female"] == pytest.approx(0.625)
    sm = se.categorical_summary(df["smoking_status"])
    assert sm["n"] == 7 and sm["missing"] == 1 and sm["proportions"]["never"] == pytest.approx(4 / 7)
    assert list(sm["counts"]) == ["never", "former", "current"]
    b = se.binary_summary(df["insulin_now"])
    assert (b["n"], b["missing"], b["count_1"]) == (7, 1, 3) and b["proportion_1"] == pytest.approx(3 / 7)


def test_threshold_parsing_and_shares():
    df = _frame()
    assert se.parse_threshold("hba1c_pct>=9") == ("hba1c_pct", ">=", 9.0, None)
    assert se.parse_threshold("HbA1c ≥ 9 %") == ("hba1c", ">=", 9.0, None)
    assert se.parse_threshold("bp >= 130/80") == ("bp", ">=", 130.0, 80.0)
    assert se.parse_threshold("HbA1c above 8") == ("hba1c", ">", 8.0, None)
    assert se.parse_threshold("bmi at least 30") == ("bmi", ">=", 30.0, None)
    with pytest.raises(ValueError):
        se.parse_threshold("hba1c is high")
    t = se.threshold_share(df, se.ThresholdSpec("hba1c_pct", ">=", 9))
    assert (t["count"], t["n"], t["missing"]) == (2, 7, 1) and t["share"] == pytest.approx(2 / 7)
    t = se.threshold_share(df, se.ThresholdSpec("hba1c_pct", "<", 7))
    assert t["count"] == 2  # 6.0 and 6.5; the missing value never counts
    bp = se.threshold_share(df, se.ThresholdSpec("sbp_mmhg", ">=", 130, "dbp_mmhg", 80))
    assert bp["count"] == 5 and bp["share"] == pytest.approx(5 / 8)  # 135/75, 128/82, 150/95, 129/80, 131/70
    below = se.threshold_share(df, se.ThresholdSpec("sbp_mmhg", "<", 130, "dbp_mmhg", 80))
    assert below["count"] == 3  # 120/70, 110/60, 125/79: both below


def test_age_bands():
    bands = se.age_band(pd.Series([18, 44, 45, 64, 65, 80, None, 17]))
    assert [None if pd.isna(b) else b for b in bands] == ["18-44", "18-44", "45-64", "45-64", "65+", "65+", None, None]


def test_correlation_hand_computed():
    c = se.correlation(pd.Series([1, 2, 3, 4, 5, None]), pd.Series([2, 1, 4, 3, 5, 9]))
    assert c["n"] == 5
    assert c["pearson"] == pytest.approx(0.8) and c["spearman"] == pytest.approx(0.8)
    assert 0 < c["pearson_p"] < 1
    const = se.correlation(pd.Series([1, 1, 1, 1]), pd.Series([1, 2, 3, 4]))
    assert const["pearson"] is None


# ---- the tool -----------------------------------------------------------------------------------
def test_args_forbid_unknown_keys_and_accept_comma_strings():
    with pytest.raises(ValidationError):
        CohortStatsArgs(dataset="last", colour="red")
    a = CohortStatsArgs(columns="hba1c_pct, bmi_kg_m2", by="sex", correlation="bmi_kg_m2,hba1c_pct")
    assert a.columns == ["hba1c_pct", "bmi_kg_m2"] and a.by == ["sex"] and a.correlation == ["bmi_kg_m2", "hba1c_pct"]
    assert SPEC.name == "cohort_stats" and SPEC.args_model is CohortStatsArgs


def test_tool_statistics_and_thresholds(ds):
    r = run(ds, dataset="ds-fixture", columns=["hba1c_pct", "sex", "insulin_now"], thresholds=["hba1c_pct>=9", "bp>=130/80", "bmi over 30"])
    d = r.data
    assert d["n_rows"] == 8 and d["dataset_id"] == "ds-fixture"
    h = d["columns"]["hba1c_pct"]
    assert h["mean"] == pytest.approx(54 / 7) and h["median"] == pytest.approx(7.5) and h["iqr"] == pytest.approx(1.75)
    assert h["unit"] == "%"
    assert d["columns"]["sex"]["proportions"] == {"female": pytest.approx(0.625), "male": pytest.approx(0.375)}
    assert d["columns"]["insulin_now"]["proportion_1"] == pytest.approx(3 / 7)
    shares = {t["threshold"]: t for t in d["thresholds"]}
    assert shares["hba1c_pct ≥ 9"]["share"] == pytest.approx(2 / 7)
    assert shares["BP ≥ 130/80"]["share"] == pytest.approx(5 / 8)
    assert shares["bmi_kg_m2 > 30"]["count"] == 3  # 31, 35, 40 (30 itself is not above)
    assert d["missing"]["hba1c_pct"] == 1 and d["missing"]["smoking_status"] == 1 and d["missing"]["bmi_kg_m2"] == 0
    assert r.text.startswith("Cohort ds-fixture: 8 rows.")
    assert "hba1c_pct mean 7.71" in r.text and "≥9 28.6%" in r.text and "BP ≥ 130/80: 62.5%" in r.text
    assert len(r.text) < 1200 and r.files == []


def test_default_columns_and_thresholds_come_from_the_condition_profile(ds):
    d = run(ds).data  # "last"
    assert d["dataset_id"] == "ds-fixture" and d["condition"] == "type-2-diabetes"
    assert list(d["columns"])[0] == "hba1c_pct"  # ranked first in the profile
    texts = {t["threshold"] for t in d["thresholds"]}
    assert {"hba1c_pct ≥ 6.5", "hba1c_pct > 9", "sbp_mmhg ≥ 130", "BP ≥ 130/80", "BP ≥ 140/90"} <= texts
    a1c9 = next(t for t in d["thresholds"] if t["threshold"] == "hba1c_pct > 9")
    assert a1c9["count"] == 1 and a1c9["guideline"]  # only 10.0 is strictly above 9


def test_without_profile_uses_all_columns_and_no_default_thresholds(deps):
    add_dataset(deps, _frame(), "ds-plain", condition=None)
    d = run(deps, dataset="ds-plain").data
    assert set(d["columns"]) == set(FIXTURE) and d["thresholds"] == []


def test_group_by_one_column(ds):
    d = run(ds, columns=["hba1c_pct", "insulin_now"], by=["sex"]).data
    groups = {g["group"]["sex"]: g for g in d["groups"]["groups"]}
    assert d["groups"]["by"] == ["sex"] and set(groups) == {"female", "male"}
    assert groups["female"]["n"] == 5 and groups["female"]["stats"]["hba1c_pct"]["mean"] == pytest.approx(37 / 5)
    assert groups["male"]["n"] == 3 and groups["male"]["stats"]["hba1c_pct"]["mean"] == pytest.approx(8.5)
    assert groups["male"]["stats"]["hba1c_pct"]["missing"] == 1
    assert groups["female"]["stats"]["insulin_now"]["proportion_1"] == pytest.approx(2 / 4)  # 1, 1, 0, 0 (one missing)


def test_group_by_two_columns_with_derived_age_band(ds):
    d = run(ds, columns=["hba1c_pct"], by=["sex", "age band"]).data
    assert d["groups"]["by"] == ["sex", "age_band"]
    got = {(g["group"]["sex"], g["group"]["age_band"]): (g["n"], g["stats"]["hba1c_pct"]["mean"]) for g in d["groups"]["groups"]}
    assert set(got) == {("female", "18-44"), ("female", "65+"), ("male", "45-64"), ("male", "65+")}  # empty cells left out
    assert got[("female", "18-44")][0] == 3 and got[("female", "18-44")][1] == pytest.approx((6 + 9 + 6.5) / 3)
    assert got[("female", "65+")] == (2, pytest.approx(7.75))
    assert got[("male", "45-64")] == (2, pytest.approx(7.0))
    assert got[("male", "65+")] == (1, pytest.approx(10.0))


def test_correlation_between_two_observations(ds):
    frame = _frame()
    d = run(ds, columns=["hba1c_pct"], correlation=["hba1c", "bmi_kg_m2"]).data
    c = d["correlation"]
    assert (c["x"], c["y"], c["n"]) == ("hba1c_pct", "bmi_kg_m2", 7)
    both = frame[["hba1c_pct", "bmi_kg_m2"]].dropna()
    assert c["pearson"] == pytest.approx(float(np.corrcoef(both["hba1c_pct"], both["bmi_kg_m2"])[0, 1]))
    assert -1 <= c["spearman"] <= 1


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"columns": ["glucose"]}, "valid columns: age_years, sex, hba1c_pct"),
        ({"by": ["bmi_kg_m2"]}, "valid grouping columns: age_band, sex"),
        ({"thresholds": ["glucose>=126"]}, "unknown numeric column 'glucose'"),
        ({"thresholds": ["hba1c looks bad"]}, "cannot read threshold"),
        ({"correlation": ["bmi_kg_m2"]}, "exactly two"),
        ({"correlation": ["bmi_kg_m2", "sex"]}, "valid numeric columns"),
        ({"plot": ["pie"]}, "heatmap, grouped, scatter"),
        ({"by": ["sex", "age_band", "smoking_status"]}, "at most two"),
    ],
)
def test_corrective_errors_list_the_valid_choices(ds, kwargs, fragment):
    with pytest.raises(ToolInputError) as err:
        run(ds, **kwargs)
    assert fragment in str(err.value)


def test_real_sources_and_unknown_data_sets_are_refused(ds):
    with pytest.raises(ToolInputError, match="real data source"):
        run(ds, dataset="nhanes-2017-2018")
    with pytest.raises(ToolInputError, match="ds-fixture"):
        run(ds, dataset="ds-nope")


def test_no_data_set_yet(deps):
    with pytest.raises(ToolInputError, match="no data set"):
        run(deps)


def test_last_prefers_the_sessions_data_set(ds):
    add_dataset(ds, _frame().iloc[:4], "ds-newer", session="other")
    assert run(ds).data["dataset_id"] == "ds-fixture"  # this session's own data set
    ds.session.last_dataset = "ds-newer"
    assert run(ds).data["n_rows"] == 4


def test_plots_are_written_as_png(ds):
    r = run(ds, columns=["hba1c_pct", "bmi_kg_m2", "sex"], by=["sex"], correlation=["hba1c_pct", "bmi_kg_m2"],
            plot=["hba1c_pct", "sex", "insulin_now", "heatmap", "grouped", "scatter"])
    plots_dir = ds.workspace.datasets_dir / "ds-fixture" / "plots"
    names = {Path(f).name for f in r.files}
    assert {"hist_hba1c_pct.png", "bar_sex.png", "bar_insulin_now.png", "correlation_heatmap.png",
            "grouped_hba1c_pct_by_sex.png", "scatter_hba1c_pct_bmi_kg_m2.png"} <= names
    for f in r.files:
        p = Path(f)
        assert p.parent == plots_dir and p.stat().st_size > 2000
        assert p.read_bytes()[:8] == PNG_MAGIC
    assert r.data["plots"] == r.files and "plot(s) in" in r.text


def test_cli_stats_json_and_error(ds, workspace_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHEHR_")}
    env["SYNTHEHR_HOME"] = str(workspace_dir)
    ok = subprocess.run([sys.executable, "-m", "synthehr", "stats", "ds-fixture", "--by", "sex", "--by2", "age_band",
                         "--corr", "hba1c_pct,bmi_kg_m2", "-t", "hba1c_pct>=9", "--json"],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["n_rows"] == 8 and out["groups"]["by"] == ["sex", "age_band"] and math.isclose(out["thresholds"][0]["share"], 2 / 7)
    table = subprocess.run([sys.executable, "-m", "synthehr", "stats", "ds-fixture", "--by", "sex"],
                           capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=120)
    assert table.returncode == 0 and "Numeric observations" in table.stdout and "female" in table.stdout
    bad = subprocess.run([sys.executable, "-m", "synthehr", "stats", "nhanes-2017-2018"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "real data source" in bad.stderr and "Traceback" not in bad.stderr
