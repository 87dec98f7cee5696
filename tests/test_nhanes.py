"""NHANES 2017-2018 harmonisation. Assertions are on aggregates only: never print a row."""

import pandas as pd
import pytest

from synthehr.tools.store.schema import ColumnType
from synthehr.tools.store.sources import nhanes


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return nhanes.load()


def test_adults_only_and_row_count(frame):
    raw = pd.read_csv(nhanes.data_file(), sep="\t", usecols=["AgeInYearsAtScreening"])
    assert len(frame) == int((raw["AgeInYearsAtScreening"] >= 18).sum()) == 5533
    assert frame["age_years"].min() >= 18


def test_columns_follow_schema(frame):
    assert list(frame.columns) == [c.name for c in nhanes.SCHEMA.columns]
    for col in nhanes.SCHEMA.columns:
        s = frame[col.name].dropna()
        if col.is_numeric:
            assert s.between(col.lower, col.upper).all(), col.name
        elif col.type is ColumnType.binary:
            assert set(s.astype(int).unique()) <= {0, 1}, col.name
        else:
            assert set(s.astype(str).unique()) <= set(col.categories), col.name
        if not col.missing_allowed:
            assert frame[col.name].notna().all(), col.name


def test_decoded_categories(frame):
    assert set(frame["sex"].dropna().unique()) == {"female", "male"}
    assert set(frame["smoking_status"].dropna().unique()) == {"never", "former", "current"}
    assert "Non-Hispanic Asian" in set(frame["race_ethnicity"].astype(str))
    assert "Don't Know" not in set(frame["education"].dropna().astype(str))


def test_no_survey_special_codes_left(frame):
    special = {7, 9, 77, 99, 666, 777, 999, 7777, 9999}
    for col in ("diabetes_age_at_diagnosis", "diabetes_duration_years", "pulse_bpm", "age_years"):
        assert not frame[col].dropna().astype(int).isin(special - set(range(0, 81))).any(), col
    # Ages at diagnosis are plausible ages, never a "don't know" code.
    assert frame["diabetes_age_at_diagnosis"].dropna().max() <= 80
    # A diastolic reading of 0 is not a blood pressure.
    assert frame["dbp_mmhg"].dropna().min() > 0


def test_diabetes_status_follows_ada_rule(frame):
    dx = frame["diabetes_diagnosed"]
    a1c = frame["hba1c_pct"]
    status = frame["diabetes"]
    must_be_1 = (dx == 1).fillna(False) | (a1c >= 6.5).fillna(False)
    must_be_0 = (dx == 0).fillna(False) & (a1c < 6.5).fillna(False)
    assert (status[must_be_1] == 1).all()
    assert (status[must_be_0] == 0).all()
    assert status[~must_be_1 & ~must_be_0].isna().all()
    # Prevalence in the unweighted adult sample is plausible (NHANES 2017-2020: 14.7% of adults, weighted).
    prevalence = float(status.mean())
    assert 0.12 < prevalence < 0.25


def test_duration_consistent_with_age(frame):
    d = frame.dropna(subset=["diabetes_duration_years", "diabetes_age_at_diagnosis"])
    assert (d["diabetes_duration_years"] <= d["age_years"]).all()
    assert (d["diabetes_age_at_diagnosis"] <= d["age_years"]).all()
    # Only diagnosed people have an age at diagnosis.
    assert frame.loc[frame["diabetes_diagnosed"] != 1, "diabetes_age_at_diagnosis"].isna().all()


def test_blood_pressure_is_mean_of_readings(frame):
    assert (frame["sbp_mmhg"].dropna() >= frame["dbp_mmhg"].reindex(frame["sbp_mmhg"].dropna().index).fillna(0)).mean() > 0.99


def test_content_hash_is_stable():
    assert nhanes.content_hash() == nhanes.content_hash()
    assert len(nhanes.content_hash()) == 64
