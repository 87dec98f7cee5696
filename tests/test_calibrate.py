"""Sampling calibration: generator records weighted to the released DP tables (post-processing)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests._dpgan_fixture import FIXTURE_SCHEMA, fast_settings, fixture_frame
from synthehr.tools.engines.dpgan import TrainedGenerator, default_delta, train_dpgan
from synthehr.tools.engines.dpgan.calibrate import Calibrator, ReleasedTable, inclusion_probabilities
from synthehr.tools.engines.dpgan.encoding import TableEncoder

CONDS = ["diabetes", "sex"]


def _tvd(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


def _calibrator(tables: list[ReleasedTable]) -> Calibrator:
    enc = TableEncoder(FIXTURE_SCHEMA, CONDS, 8)
    return Calibrator(enc, 8, 4, {}, tables)


def _pool(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age_years": rng.integers(18, 90, n), "sex": rng.choice(["female", "male"], n),
        "race_ethnicity": rng.choice(["A", "B", "C"], n), "bmi_kg_m2": rng.uniform(12, 70, n),
        "hba1c_pct": rng.uniform(3, 16, n), "sbp_mmhg": rng.uniform(70, 240, n),
        "diabetes_diagnosed": rng.integers(0, 2, n), "diabetes": rng.integers(0, 2, n),
        "smoking_status": rng.choice(["never", "former", "current"], n)})


def test_raking_matches_a_reachable_table_and_keeps_weights_bounded() -> None:
    # race x diabetes target: race A much more common among diabetes == 0, C among diabetes == 1; the
    # diabetes mix (50/50) is the pool's, as in the engine (tables and condition joint share their margins)
    target = np.array([[0.30, 0.10], [0.10, 0.20], [0.10, 0.20]])  # race (A, B, C) x diabetes (0, 1)
    cal = _calibrator([ReleasedTable(("race_ethnicity", "diabetes"), ("fine", "cond"), target / target.sum())])
    pool = _pool(20_000, 1)
    w = cal.weights(pool, [])
    codes = cal.coder.codes(pool, "race_ethnicity", "fine") * 2 + cal.coder.codes(pool, "diabetes", "cond")
    got = np.bincount(codes, weights=w, minlength=6).reshape(3, 2)
    raw = np.bincount(codes, minlength=6).reshape(3, 2).astype(float)
    assert _tvd(raw, target) > 0.1
    assert _tvd(got, target) < 0.01
    assert w.max() / w.mean() <= 4.0 + 1e-9 and w.min() / w.mean() >= 0.25 - 1e-9


def test_target_for_a_restricted_cohort_is_the_table_conditioned_on_it() -> None:
    target = np.array([[0.30, 0.05], [0.25, 0.05], [0.25, 0.10]])
    t = ReleasedTable(("race_ethnicity", "diabetes"), ("fine", "cond"), target / target.sum())
    cal = _calibrator([t])
    pool_r = np.array([0.0, 1.0])  # a diabetes == 1 cohort
    tgt = cal.table_target(t, ["diabetes"], pool_r)
    assert np.allclose(tgt[:, 1], target[:, 1] / target[:, 1].sum()) and np.allclose(tgt[:, 0], 0)


def test_a_pair_without_the_cohort_column_is_conditioned_through_the_max_entropy_joint() -> None:
    # bmi x diabetes and race x diabetes measured, plus a race x bmi pair: P(race, bmi | diabetes=1)
    enc = TableEncoder(FIXTURE_SCHEMA, CONDS, 8)
    rng = np.random.default_rng(0)
    joint = rng.random((3, 9, 2)) + 0.05  # race x bmi(8 bins + missing) x diabetes
    joint /= joint.sum()
    tables = [ReleasedTable(("race_ethnicity", "diabetes"), ("fine", "cond"), joint.sum(1)),
              ReleasedTable(("bmi_kg_m2", "diabetes"), ("fine", "cond"), joint.sum(0)),
              ReleasedTable(("race_ethnicity", "bmi_kg_m2"), ("fine", "fine"), joint.sum(2))]
    cal = Calibrator(enc, 8, 4, {}, tables)
    tgt = cal.table_target(tables[2], ["diabetes"], np.array([0.0, 1.0]))
    assert tgt.shape == (3, 9) and abs(tgt.sum() - 1) < 1e-9
    # its margins are the diabetes == 1 margins of the measured tables
    assert np.allclose(tgt.sum(1), joint[:, :, 1].sum(1) / joint[:, :, 1].sum(), atol=1e-6)
    assert np.allclose(tgt.sum(0), joint[:, :, 1].sum(0) / joint[:, :, 1].sum(), atol=1e-6)


def test_a_table_not_linked_to_a_restricted_column_is_left_alone() -> None:
    # restricting on sex: a bmi x diabetes table says nothing about bmi among women -> not used
    t = ReleasedTable(("bmi_kg_m2", "diabetes"), ("fine", "cond"), np.full((9, 2), 1 / 18))
    cal = _calibrator([t])
    assert not cal.usable(t, ["sex"])
    assert cal.usable(t, ["diabetes"])
    pool = _pool(5_000, 2)
    assert np.allclose(cal.weights(pool, ["sex"]), 1.0)


def test_inclusion_probabilities_are_proportional_capped_and_sum_to_the_draw() -> None:
    w = np.array([10.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    pi = inclusion_probabilities(w, 3)
    assert abs(pi.sum() - 3) < 1e-9 and pi.max() <= 1.0 + 1e-12
    assert pi[0] == 1.0  # a record heavier than its share is taken for sure, the rest stay proportional
    assert np.allclose(pi[1:5], pi[1]) and abs(pi[5] / pi[1] - 2) < 1e-9


def test_the_draw_keeps_records_in_proportion_to_their_weights_without_duplicates() -> None:
    cal = _calibrator([])
    pool = _pool(8_000, 5)
    heavy = pool["sex"].to_numpy() == "male"
    cal.weights = lambda frame, restricted, cond_mix=None: np.where(heavy, 3.0, 1.0)  # type: ignore[method-assign]
    pick = cal.draw(pool, [], 2_000, np.random.default_rng(0))
    assert len(pick) == 2_000 and len(np.unique(pick)) == 2_000
    share = heavy[pick].mean()
    expected = 3 * heavy.mean() / (3 * heavy.mean() + (1 - heavy.mean()))
    assert abs(share - expected) < 0.02  # the exponential-key draw gave about 0.71 here, not 0.75


def test_the_demographic_table_is_raked_last_and_holds_when_tables_disagree() -> None:
    # A selected pair and the age x diabetes table (age is demographic) disagree about age; the demographic
    # table is fitted last, so the weighted pool ends on it whatever order the tables came in.
    enc = TableEncoder(FIXTURE_SCHEMA.model_copy(update={"demographics": ["age_years"]}), CONDS, 8)
    age_old = np.array([1, 1, 1, 1, 2, 4, 6, 8, 0.0])  # 8 bins + missing
    age_young = age_old[::-1].copy()
    age_young[-1], age_young[0] = 0.0, 8.0
    demo = ReleasedTable(("age_years", "diabetes"), ("fine", "cond"),
                         np.stack([age_young, age_young], axis=1) / (2 * age_young.sum()), "mandatory")
    pair = np.outer(age_old, np.full(9, 1.0))
    pair[:, -1] = 0
    sel = ReleasedTable(("age_years", "bmi_kg_m2"), ("fine", "fine"), pair / pair.sum(), "selected")
    pool = _pool(20_000, 6)
    for tables in ([demo, sel], [sel, demo]):
        cal = Calibrator(enc, 8, 4, {}, tables)
        assert [t.kind for t in cal.tables] == ["selected", "mandatory"]
        w = cal.weights(pool, [])
        codes = cal.coder.codes(pool, "age_years", "fine")
        got = np.bincount(codes, weights=w, minlength=9)
        assert _tvd(got[:8], age_young[:8]) < 0.05


def test_a_key_measure_gets_the_demographic_share_and_is_raked_with_the_demographics() -> None:
    from synthehr.tools.engines.dpgan.structure import DEMOGRAPHIC_WEIGHT, POOLED_SHARE, mandatory_weights

    schema = FIXTURE_SCHEMA.model_copy(update={"demographics": ["age_years"], "key_measures": ["hba1c_pct"]})
    w = {cols: weight for cols, _res, weight in mandatory_weights(schema, CONDS, ["age_years", "bmi_kg_m2", "hba1c_pct"],
                                                                  {"age_years", "bmi_kg_m2", "hba1c_pct"})}
    assert w[("hba1c_pct", "diabetes")] == pytest.approx(DEMOGRAPHIC_WEIGHT * (1 - POOLED_SHARE))
    assert w[("hba1c_pct",)] == pytest.approx(DEMOGRAPHIC_WEIGHT * POOLED_SHARE) == w[("age_years",)]
    assert w[("bmi_kg_m2", "diabetes")] == pytest.approx(1 - POOLED_SHARE)
    enc = TableEncoder(schema, CONDS, 8)
    flat = np.full((9, 2), 1.0 / 18)
    tables = [ReleasedTable(("hba1c_pct", "diabetes"), ("fine", "cond"), flat, "mandatory"),
              ReleasedTable(("bmi_kg_m2", "diabetes"), ("fine", "cond"), flat, "mandatory"),
              ReleasedTable(("age_years", "bmi_kg_m2"), ("fine", "fine"), np.full((9, 9), 1.0 / 81), "selected")]
    cal = Calibrator(enc, 8, 4, {}, tables)
    assert [t.cols[0] for t in cal.tables] == ["age_years", "bmi_kg_m2", "hba1c_pct"]  # trust order
    with pytest.raises(ValueError, match="key_measures names 'glucose'"):
        FIXTURE_SCHEMA.model_validate({**FIXTURE_SCHEMA.model_dump(), "key_measures": ["glucose"]})


@pytest.fixture(scope="module")
def model() -> TrainedGenerator:
    frame = fixture_frame(600, seed=3)
    return train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=2.0, target_delta=default_delta(len(frame)),
                       conditions=CONDS, seed=4, settings=fast_settings(epochs=2), preprocessing_share=0.5,
                       n_public=len(frame))


def test_calibrated_sampling_is_exact_in_size_reproducible_and_draws_without_replacement(model: TrainedGenerator) -> None:
    assert model.calibrator is not None
    a = model.sample(1500, seed=11, fixed={"diabetes": 1})
    b = model.sample(1500, seed=11, fixed={"diabetes": 1})
    assert len(a) == 1500 and (a["diabetes"].astype(str) == "1").all()
    pd.testing.assert_frame_equal(a, b)
    # records are drawn from the pool without replacement
    pool = _pool(4_000, 3)
    pick = model.calibrator.draw(pool, ["diabetes"], 1_000, np.random.default_rng(0))
    assert len(pick) == 1_000 and len(set(pick.tolist())) == 1_000


def test_calibration_moves_the_sample_towards_the_released_tables(model: TrainedGenerator) -> None:
    """Raking pulls a pool that is off the released tables back towards them: with most records aged 60+
    removed, the weighted pool's age tables are much closer to the release than the unweighted pool.
    (On an unbiased pool the mean distance over all tables can stay flat: the noisy tables disagree
    with each other a little, and the generator already fits them.)"""
    cal = model.calibrator
    model.calibrate = False
    try:
        pool = model.sample(20_000, seed=5)
    finally:
        model.calibrate = True
    age = pd.to_numeric(pool["age_years"], errors="coerce")
    rng = np.random.default_rng(0)
    pool = pool.loc[~((age >= 60) & (rng.random(len(pool)) < 0.7))].reset_index(drop=True)
    used = [t for t in cal.tables if "age_years" in t.cols and not all(c in cal.conds for c in t.cols)]
    assert used

    def mean_tvd(w: np.ndarray) -> float:
        out = []
        for t in used:
            idx = np.ravel_multi_index(tuple(cal.coder.codes(pool, c, z) for c, z in zip(t.cols, t.res)), t.probs.shape)
            h = np.bincount(idx, weights=w, minlength=t.probs.size)
            out.append(_tvd(h, t.probs.ravel()))
        return float(np.mean(out))

    before, after = mean_tvd(np.ones(len(pool))), mean_tvd(cal.weights(pool, []))
    assert after < 0.8 * before, (before, after)  # measured: 0.5-0.66x


def test_filters_on_generated_columns_apply_after_calibration(model: TrainedGenerator) -> None:
    s = model.sample(400, seed=3, fixed={"diabetes": 1}, filters=["age_years>=65"])
    assert len(s) == 400 and (pd.to_numeric(s["age_years"]) >= 65).all()


def test_rejected_records_do_not_move_the_conditioning_mix(model: TrainedGenerator) -> None:
    """Records whose rule-derived label no longer matches are dropped before raking; the weighted pool keeps
    the conditioning mix it was drawn with, so the sample's label share stays on the DP histogram."""
    cal = model.calibrator
    model.calibrate = False
    try:
        pool = model.sample(20_000, seed=6)
    finally:
        model.calibrate = True
    conds = list(cal.coder.cond)
    sizes = [cal.coder.size(c, "cond") for c in conds]
    cells = np.ravel_multi_index(tuple(cal.coder.codes(pool, c, "cond") for c in conds), sizes)
    drawn = np.bincount(cells, minlength=int(np.prod(sizes)))
    diab = pd.to_numeric(pool["diabetes"], errors="coerce") == 1
    kept = ~(diab & (np.random.default_rng(0).random(len(pool)) < 0.6)).to_numpy()  # most diabetic records rejected
    sub = pool.loc[kept].reset_index(drop=True)
    share = float(diab.mean())
    plain = np.average(diab[kept], weights=cal.weights(sub, []))
    fixed = np.average(diab[kept], weights=cal.weights(sub, [], cond_mix=drawn))
    assert abs(fixed - share) < 0.01 < abs(plain - share)
