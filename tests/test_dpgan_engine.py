"""DP-GAN engine: privacy accounting, sampling constraints, bounds, missingness, seeds, artifacts."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests._dpgan_fixture import FIXTURE_SCHEMA, fast_settings, fixture_frame
from synthehr.tools.base import ToolInputError
from synthehr.tools.engines.dpgan import ModelLoadError, TrainedGenerator, default_delta, train_dpgan
from synthehr.tools.engines.dpgan.encoding import TableEncoder
from synthehr.tools.store.schema import ColumnType

CONDS = ["diabetes", "sex"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return fixture_frame(500)


@pytest.fixture(scope="module")
def model(frame: pd.DataFrame) -> TrainedGenerator:
    return train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=3.0, target_delta=default_delta(len(frame)),
                       conditions=CONDS, seed=11, settings=fast_settings(epochs=4), preprocessing_share=0.2)


# ---- privacy ------------------------------------------------------------------------------
@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("target", [0.5, 2.0])
def test_reported_epsilon_never_above_target(frame: pd.DataFrame, accountant: str, target: float) -> None:
    delta = default_delta(len(frame))
    m = train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=target, target_delta=delta, conditions=CONDS, seed=1,
                    accountant=accountant, settings=fast_settings(epochs=2), preprocessing_share=0.05)
    assert m.epsilon <= target
    assert m.accountant == accountant and m.delta == delta and m.target_epsilon == target
    assert sum(c["epsilon"] for c in m.charges) == pytest.approx(m.epsilon)
    assert sum(c["epsilon"] for c in m.charges) <= target
    sgd = [c for c in m.charges if c["mechanism"].startswith("dp-sgd")][0]
    assert sgd["epsilon"] <= target * 0.95 + 1e-12  # the DP-SGD share
    assert sgd["epsilon"] > 0.5 * target * 0.95  # calibrated close to its share, not wasted
    assert m.history and all(h["epsilon_dp_sgd"] <= target for h in m.history)


def test_histogram_only_preprocessing_charges_everything(frame: pd.DataFrame) -> None:
    """marginal_weight 0: no per-column tables are released; the whole preprocessing share buys the
    condition histogram, and preprocessing + DP-SGD still never exceed the target."""
    delta = default_delta(len(frame))
    m = train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=1.0, target_delta=delta, conditions=CONDS, seed=2,
                    settings=fast_settings(epochs=2, marginal_weight=0.0), preprocessing_share=0.1)
    pre = m.charges[0]
    assert pre["mechanism"] == "opendp-zcdp-marginals" and "and 0 pairs" in pre["what"]
    assert pre["epsilon"] == pytest.approx(0.1, rel=1e-4) and pre["epsilon"] <= 0.1
    assert [t["columns"] for t in m.hyperparameters["structure"]["tables"]] == [["diabetes"], ["sex", "diabetes"]]
    assert m.epsilon <= 1.0 and sum(c["epsilon"] for c in m.charges) == pytest.approx(m.epsilon)
    assert m.cond_hist.shape == tuple(m.encoder.cond_sizes) and (m.cond_hist >= 0).all()
    out = m.sample(200, seed=0, fixed={"diabetes": 1})
    assert len(out) == 200 and (out["diabetes"].astype(int) == 1).all()


@pytest.mark.parametrize("eps,delta,sens", [(0.2, 5e-5, 30 ** 0.5), (1.0, 1e-5, 1.0), (3.0, 1e-6, 4.0)])
def test_analytic_gaussian_sigma_is_tight_and_valid(eps: float, delta: float, sens: float) -> None:
    from synthehr.tools.engines.dpgan.privacy import _gaussian_delta, analytic_gaussian_sigma

    sigma = analytic_gaussian_sigma(eps, delta, sens)
    assert _gaussian_delta(eps, sigma, sens) <= delta  # (eps, delta)-DP (Balle & Wang 2018, Thm 8)
    assert _gaussian_delta(eps, sigma * 0.999, sens) > delta  # and (nearly) the smallest such sigma
    if eps < 1:  # never noisier than the classical calibration
        assert sigma <= sens * (2 * np.log(1.25 / delta)) ** 0.5 / eps


def test_structure_composes_with_dp_sgd_within_target(frame: pd.DataFrame) -> None:
    delta = default_delta(len(frame))
    m = train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=1.0, target_delta=delta, conditions=CONDS, seed=3,
                    settings=fast_settings(epochs=2), preprocessing_share=0.3)
    mech = [c["mechanism"] for c in m.charges]
    assert mech[0] == "opendp-zcdp-marginals" and mech[1].startswith("dp-sgd") and len(mech) == 2
    # basic composition: epsilons and deltas add up, and neither sum exceeds its target
    assert sum(c["epsilon"] for c in m.charges) == pytest.approx(m.epsilon) and m.epsilon <= 1.0
    assert sum(c["delta"] for c in m.charges) == pytest.approx(delta) and m.delta == delta
    assert m.charges[0]["epsilon"] == pytest.approx(0.3, rel=1e-4) and m.charges[0]["epsilon"] <= 0.3


def test_default_delta_below_one_over_n() -> None:
    assert default_delta(1000) < 1 / 1000
    assert default_delta(1000, 1e-9) == 1e-9


# ---- encoding -----------------------------------------------------------------------------
def test_encoding_uses_public_bounds_and_explicit_missingness(frame: pd.DataFrame) -> None:
    enc = TableEncoder(FIXTURE_SCHEMA, CONDS, numeric_bins=8)
    x, c = enc.encode(frame)
    assert np.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    bmi = next(b for b in enc.blocks if b.name == "bmi_kg_m2")
    miss = x[:, bmi.start + 2] == 1
    assert miss.sum() == frame["bmi_kg_m2"].isna().sum()
    assert (x[miss, bmi.start] == 0).all()  # missing is flagged, never imputed
    assert c.sum(axis=1).tolist() == [2.0] * len(frame)
    # an encoder from the same schema is identical whatever the data: nothing learnt from records
    assert TableEncoder(FIXTURE_SCHEMA, CONDS, numeric_bins=8).describe() == enc.describe()


# ---- sampling -----------------------------------------------------------------------------
def test_exact_n_and_cohort_definition_for_every_row(model: TrainedGenerator) -> None:
    out = model.sample(700, seed=3, fixed={"diabetes": 1, "sex": "female"}, filters=["age_years>=40"])
    assert len(out) == 700
    assert (out["diabetes"] == 1).all() and (out["sex"] == "female").all()
    assert (out["age_years"] >= 40).all()


def test_values_inside_public_bounds_and_types(model: TrainedGenerator) -> None:
    out = model.sample(3000, seed=5)
    assert list(out.columns) == [c.name for c in FIXTURE_SCHEMA.columns]
    for col in FIXTURE_SCHEMA.columns:
        s = out[col.name].dropna()
        if col.is_numeric:
            v = s.astype(float)
            assert v.between(col.lower, col.upper).all(), col.name
            if col.type is ColumnType.integer:
                assert (v == v.round()).all()
        elif col.type is ColumnType.binary:
            assert set(s.astype(int)) <= {0, 1}
        else:
            assert set(s.astype(str)) <= set(col.categories)
        if not col.missing_allowed:
            assert out[col.name].notna().all()


def test_missingness_comes_out_near_real_rates() -> None:
    # A generous budget so the test checks the mechanism (missingness indicators), not DP noise.
    frame = fixture_frame(1500, seed=2)
    m = train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=50.0, target_delta=1e-5, conditions=CONDS, seed=2,
                    settings=fast_settings(epochs=12, batch_size=256), preprocessing_share=0.3)
    out = m.sample(6000, seed=1)
    for col in ("bmi_kg_m2", "sbp_mmhg", "smoking_status"):
        real, syn = frame[col].isna().mean(), out[col].isna().mean()
        assert abs(real - syn) < 0.06, (col, real, syn)


def test_range_filters_and_proportions(model: TrainedGenerator) -> None:
    # a threshold inside the (small, fast-trained) model's age range, so the stratum is reachable
    thr = int(model.sample(2000, seed=1, fixed={"diabetes": 1})["age_years"].median())
    out = model.sample(1000, seed=9, fixed={"diabetes": 1},
                       proportions={"sex=female": 0.4, f"age_years>={thr}": 0.6}, filters=["hba1c_pct>=4"])
    assert len(out) == 1000
    assert (out["sex"] == "female").sum() == 400
    assert (out["age_years"] >= thr).sum() == 600
    assert (out["hba1c_pct"] >= 4).all() and (out["diabetes"] == 1).all()


def test_impossible_filter_is_a_corrective_error(model: TrainedGenerator) -> None:
    with pytest.raises(ToolInputError, match="impossible under the model"):
        model.sample(100, seed=1, filters=["hba1c_pct>=15.99", "bmi_kg_m2<=12.01"])


def test_unknown_filter_column_lists_columns(model: TrainedGenerator) -> None:
    with pytest.raises(ToolInputError, match="valid columns: age_years"):
        model.sample(10, seed=1, filters=["ldl>=100"])
    with pytest.raises(ToolInputError, match="valid: female, male"):
        model.sample(10, seed=1, fixed={"sex": "other"})


def test_same_seed_same_samples(model: TrainedGenerator) -> None:
    a = model.sample(500, seed=42, fixed={"diabetes": 1})
    b = model.sample(500, seed=42, fixed={"diabetes": 1})
    c = model.sample(500, seed=43, fixed={"diabetes": 1})
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_same_seed_retrains_to_a_different_model(frame: pd.DataFrame) -> None:
    """Privacy noise and Poisson sampling are secure: the seed never reproduces a training run
    (issue 10; this replaced the old 'same seed, same weights' test on purpose)."""
    kw = dict(target_epsilon=1.0, target_delta=1e-4, conditions=CONDS, seed=5, settings=fast_settings(epochs=1))
    a, b = train_dpgan(frame, FIXTURE_SCHEMA, **kw), train_dpgan(frame, FIXTURE_SCHEMA, **kw)
    diff = [k for (k, va), (_, vb) in zip(a.generator.state_dict().items(), b.generator.state_dict().items())
            if not bool((va == vb).all())]
    assert diff  # different weights
    ha, hb = a.manifest()["condition_histogram"]["noisy_counts"], b.manifest()["condition_histogram"]["noisy_counts"]
    assert ha != hb  # different DP noise
    # ... and the noise is not the seed's numpy stream: subtracting it does not give integer true counts.
    from synthehr.tools.engines.dpgan.encoding import TableEncoder as _TE

    enc = _TE(FIXTURE_SCHEMA, CONDS, 0)
    codes = enc.encode_conditions_codes(frame)
    true = np.bincount(np.ravel_multi_index(codes.T, enc.cond_sizes), minlength=int(np.prod(enc.cond_sizes)))
    for scale in (1.0, 2.0, 10.0):
        for draw in ("laplace", "normal"):
            noise = getattr(np.random.default_rng(5), draw)(0, scale, true.size)
            assert not np.allclose(np.asarray(ha) - noise, true, atol=0.5)


def test_save_load_roundtrip(model: TrainedGenerator, tmp_path: Path) -> None:
    model.save(tmp_path / "m", extra_manifest={"source": "fixture-clinic"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["generator.safetensors", "manifest.json"]
    loaded = TrainedGenerator.load(tmp_path / "m", expected_schema=FIXTURE_SCHEMA)
    assert loaded.epsilon == model.epsilon and loaded.conditions == model.conditions
    pd.testing.assert_frame_equal(loaded.sample(300, seed=8), model.sample(300, seed=8))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["privacy"]["epsilon"] <= manifest["privacy"]["target_epsilon"]
    assert {"schema", "hyperparameters", "encoder", "seed", "versions", "weights", "extra"} <= set(manifest)


def test_tampered_manifest_or_weights_refused(model: TrainedGenerator, tmp_path: Path) -> None:
    d = model.save(tmp_path / "m")
    path = d / "manifest.json"
    original = path.read_text()
    path.write_text(original.replace('"target_epsilon": 3.0', '"target_epsilon": 30.0'))
    with pytest.raises(ModelLoadError, match="modified"):
        TrainedGenerator.load(d)
    path.write_text(original)
    w = d / "generator.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-1] ^= 0xFF
    w.write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match="weights"):
        TrainedGenerator.load(d)


def test_schema_mismatch_refused(model: TrainedGenerator, tmp_path: Path) -> None:
    d = model.save(tmp_path / "m")
    other = FIXTURE_SCHEMA.model_copy(update={"columns": FIXTURE_SCHEMA.columns[:-1]})
    with pytest.raises(ModelLoadError, match="different schema"):
        TrainedGenerator.load(d, expected_schema=other)


def test_model_files_hold_no_training_row(model: TrainedGenerator, frame: pd.DataFrame, tmp_path: Path) -> None:
    d = model.save(tmp_path / "m")
    blob = b"".join(p.read_bytes() for p in sorted(d.iterdir()))
    text = blob.decode("latin-1")
    numeric = ["bmi_kg_m2", "hba1c_pct", "sbp_mmhg"]
    hits = 0
    for _, row in frame.head(200).iterrows():
        vals = [row[c] for c in numeric]
        if any(pd.isna(v) for v in vals):
            continue
        for fmt in ("<3f", "<3d"):
            hits += struct.pack(fmt, *map(float, vals)) in blob
        hits += ",".join(f"{v:g}" for v in vals) in text
        hits += json.dumps([float(v) for v in vals]) in text
    assert hits == 0


def test_same_rows_on_one_or_two_sampling_threads(model: TrainedGenerator, monkeypatch: pytest.MonkeyPatch) -> None:
    import synthehr.tools.engines.dpgan.model as mod

    out = {}
    for n in (1, 2):
        monkeypatch.setattr(mod, "SAMPLING_THREADS", n)
        out[n] = model.sample(3000, seed=9)
    pd.testing.assert_frame_equal(out[1], out[2])
