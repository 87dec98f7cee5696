"""Fidelity metrics that cannot hide a broken pair (made-up frames, no real rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthehr.tools.engines import fidelity as fm

SPEC = [{"name": "age_years", "type": "integer", "lower": 18, "upper": 90, "categories": None},
        {"name": "bmi", "type": "continuous", "lower": 12, "upper": 70, "categories": None},
        {"name": "waist", "type": "continuous", "lower": 40, "upper": 200, "categories": None},
        {"name": "sex", "type": "categorical", "lower": None, "upper": None, "categories": ["female", "male"]},
        {"name": "y", "type": "binary", "lower": None, "upper": None, "categories": None}]
SPEC += [{"name": f"noise{i}", "type": "continuous", "lower": -9, "upper": 9, "categories": None} for i in range(8)]


def _frame(n: int, seed: int, flip: bool = False, break_pair: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    bmi = rng.normal(29, 5, n)
    waist = 2.5 * bmi + rng.normal(25, 4, n)
    if break_pair:
        waist = rng.permutation(waist)
    sex = rng.choice(["female", "male"], n)
    logit = 0.05 * (age - 50) * (-1 if flip else 1) + 0.1 * (bmi - 29)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    out = pd.DataFrame({"age_years": age, "bmi": bmi, "waist": waist, "sex": sex, "y": y})
    for i in range(8):
        out[f"noise{i}"] = rng.normal(0, 1, n)
    return out


def test_a_broken_pair_is_the_worst_pair_and_shows_in_the_top_correlations() -> None:
    real, good, broken = _frame(3000, 1), _frame(3000, 2), _frame(3000, 3, break_pair=True)
    t_good, t_bad = fm.all_pairs_tvd(real, good, SPEC), fm.all_pairs_tvd(real, broken, SPEC)
    assert t_bad["worst"][0]["a"] == "bmi" and t_bad["worst"][0]["b"] == "waist"
    assert t_bad["worst"][0]["tvd"] > 0.3 > t_good["worst"][0]["tvd"]
    # the average over 78 pairs barely moves: that is why the worst pairs are reported
    assert t_bad["mean"] - t_good["mean"] < 0.02
    c_good, c_bad = fm.top_correlation_error(real, good, SPEC), fm.top_correlation_error(real, broken, SPEC)
    assert c_good["pairs"][0]["a"] == "bmi" and c_good["pairs"][0]["b"] == "waist"
    assert c_bad["max_abs_error"] > 0.8 and c_good["max_abs_error"] < 0.1


def test_reversed_predictor_signs_are_named() -> None:
    real = _frame(4000, 4)
    same = fm.predictor_signs(real, _frame(4000, 5), SPEC, "y", k=2)
    flipped = fm.predictor_signs(real, _frame(4000, 6, flip=True), SPEC, "y", k=2)
    assert same["agreement"] == 1.0 and not same["reversed"]
    assert flipped["reversed"] == ["age_years"] and flipped["agreement"] == 0.5
    # the marginal associations: age is the strongest, and the flipped sample reverses it
    assert same["marginal"]["top"][0]["feature"] == "age_years" and same["marginal"]["reversed"] == []
    assert flipped["marginal"]["reversed"] == ["age_years"]


def test_a_sign_the_real_data_do_not_determine_is_not_counted_as_reversed() -> None:
    # y depends on x; z has no effect, so its real coefficient's sign is noise (|z| < 1.96) and a synthetic
    # sample with the opposite small effect must not be reported as reversing it
    rng = np.random.default_rng(11)
    spec = [{"name": c, "type": "continuous", "lower": -9, "upper": 9, "categories": None} for c in ("x", "z")]
    spec.append({"name": "y", "type": "binary", "lower": None, "upper": None, "categories": None})

    def frame(n: int, bz: float) -> pd.DataFrame:
        x, z = rng.normal(0, 1, n), rng.normal(0, 1, n)
        return pd.DataFrame({"x": x, "z": z, "y": (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x + bz * z)))).astype(int)})

    real = frame(300, 0.0)
    zr = fm.predictor_signs(real, real, spec, "y", k=2)["top"][1]
    synth = frame(20000, -0.3 * np.sign(zr["real"]))
    out = fm.predictor_signs(real, synth, spec, "y", k=2)
    assert out["top"][0]["feature"] == "x" and out["top"][0]["determined"]
    assert out["undetermined"] == ["z"] and out["reversed"] == [] and out["agreement"] == 1.0
    assert np.sign(out["top"][1]["synthetic"]) != np.sign(out["top"][1]["real"])  # reversed, but not counted


def test_wald_z_matches_the_spread_of_refits() -> None:
    # the Wald standard error of a penalised logistic coefficient vs its spread over independent samples
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(12)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(0, 1, (n, 3))
        return x, (rng.random(n) < 1 / (1 + np.exp(-(x @ np.array([0.8, -0.4, 0.0]))))).astype(float)

    fits = [LogisticRegression(C=1.0).fit(*sample(500)).coef_[0] for _ in range(200)]
    x, y = sample(500)
    m = LogisticRegression(C=1.0).fit(x, y)
    se = m.coef_[0] / fm._wald_z(x, y, m.coef_[0], float(m.intercept_[0]), 1.0)
    assert np.allclose(se, np.std(fits, axis=0), rtol=0.2)


def test_cohort_fidelity_sees_a_shifted_cohort() -> None:
    real = _frame(2000, 7)
    older = _frame(2000, 8).assign(age_years=lambda d: np.minimum(d["age_years"] + 15, 89))
    ok, bad = fm.cohort_fidelity(real, _frame(2000, 9), SPEC), fm.cohort_fidelity(real, older, SPEC)
    assert ok["age_band_tvd"] < 0.05 < bad["age_band_tvd"]
    assert bad["mean_diff_sd"]["age_years"] > 0.5 and ok["sex_tvd"] < 0.05
