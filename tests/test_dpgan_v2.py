"""DP-GAN engine v2: secure randomness, no real-row statistics released, private structure, precision,
coherence rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests._dpgan_fixture import FIXTURE_SCHEMA, fast_settings, fixture_frame
from synthehr.tools.engines.dpgan import TrainedGenerator, default_delta, train_dpgan

CONDS = ["diabetes", "sex"]
REAL_ROW_KEYS = ("d_loss", "loss_d", "disc_loss", "real_loss", "d_real", "accuracy")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return fixture_frame(600, seed=3)


@pytest.fixture(scope="module")
def model(frame: pd.DataFrame) -> TrainedGenerator:
    return train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=2.0, target_delta=default_delta(len(frame)),
                       conditions=CONDS, seed=4, settings=fast_settings(epochs=2), preprocessing_share=0.5,
                       n_public=len(frame))


def _keys(obj: object) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


class _Recorder:
    def __init__(self) -> None:
        self.fields: list[dict] = []
        self.tasks: list[tuple[str, int | None]] = []
        self.done: dict[str, int] = {}

    def start(self, task: str, total: int | None = None) -> None:
        self.tasks.append((task, total))
        self.done[task] = 0

    def update(self, n: int = 1, **fields: object) -> None:
        self.fields.append(dict(fields))
        self.done[self.tasks[-1][0]] += n

    def finish(self) -> None: ...


def test_manifest_and_progress_hold_no_loss_of_real_rows(frame: pd.DataFrame, tmp_path: Path) -> None:
    rec = _Recorder()
    m = train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=1.0, target_delta=1e-4, conditions=CONDS, seed=1,
                    settings=fast_settings(epochs=2), progress=rec)  # type: ignore[arg-type]
    m.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    keys = _keys(manifest) | {k for f in rec.fields for k in f}
    # the marginal pre-training, then the epochs; each reports its steps in full and a generator-side loss
    assert [t for t, _ in rec.tasks] == ["fitting the DP tables", "training DP-GAN"]
    assert all(rec.done[t] == total for t, total in rec.tasks)
    assert rec.fields and all(set(f) in ({"marginal_l1"}, {"g_loss", "epsilon"}) for f in rec.fields)
    assert not keys & set(REAL_ROW_KEYS), keys & set(REAL_ROW_KEYS)
    assert all(set(h) <= {"epoch", "g_loss", "marginal_l1", "epsilon_dp_sgd"} for h in manifest["history"])
    assert "os.urandom" in manifest["privacy"]["randomness"]


@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_structure_plus_dp_sgd_never_above_target(frame: pd.DataFrame, eps: float) -> None:
    delta = default_delta(len(frame))
    m = train_dpgan(frame, FIXTURE_SCHEMA, target_epsilon=eps, target_delta=delta, conditions=CONDS, seed=2,
                    settings=fast_settings(epochs=1), preprocessing_share=0.5, n_public=len(frame))
    assert m.epsilon <= eps and sum(c["epsilon"] for c in m.charges) == pytest.approx(m.epsilon)
    assert sum(c["delta"] for c in m.charges) == pytest.approx(delta)
    from synthehr.tools.engines.dpgan.privacy import zcdp_to_epsilon

    rho = m.privacy_details["rho_preprocessing"]
    assert zcdp_to_epsilon(rho, delta / 2) <= eps * 0.5 + 1e-9


def test_workload_has_every_column_by_the_label_and_selected_pairs(model: TrainedGenerator) -> None:
    tables = model.hyperparameters["structure"]["tables"]
    pairs = [t for t in tables if t["kind"] == "mandatory" and len(t["columns"]) == 2]
    mand = {t["columns"][0] for t in pairs}
    assert mand == {c.name for c in FIXTURE_SCHEMA.columns} - {"diabetes"}  # every column x the label
    assert all(t["columns"][1] == "diabetes" for t in pairs)
    # plus the label's own table (the cohort sizes), measured once with a larger share
    own = [t for t in tables if t["kind"] == "mandatory" and t["columns"] == ["diabetes"]]
    assert len(own) == 1 and own[0]["sigma"] < min(t["sigma"] for t in pairs)
    sel = [t for t in tables if t["kind"] == "selected"]
    assert sel and all(len(t["columns"]) == 2 and "diabetes" not in t["columns"] for t in sel)
    # consistency (post-processing): every mandatory table has the same label margin, and the condition
    # joint the sampler draws from has it too
    labs = [np.asarray(t["counts"]).reshape(t["shape"]).sum(axis=0) for t in pairs]
    for lab in labs[1:]:
        assert np.allclose(lab, labs[0], rtol=1e-3, atol=0.05)
    joint = model.cond_hist / model.cond_hist.sum()
    assert np.allclose(joint.sum(axis=1), labs[0] / labs[0].sum(), atol=1e-3)


def test_noisy_tables_are_secure_and_not_seed_driven() -> None:
    from synthehr.tools.engines.dpgan.privacy import secure_gaussian_counts

    counts = np.arange(50)
    a, b = secure_gaussian_counts(counts, 3.0), secure_gaussian_counts(counts, 3.0)
    assert not np.array_equal(a, b) and np.allclose(a, np.rint(a))  # exact discrete Gaussian: integers
    assert 1.5 < float(np.std(np.concatenate([a, b]) - np.concatenate([counts, counts]))) < 6.0


# ---- precision and coherence ----------------------------------------------------------------
def test_generated_values_are_rounded_to_declared_precision(model: TrainedGenerator) -> None:
    s = model.sample(500, seed=3)
    for col, p in (("bmi_kg_m2", 0.1), ("hba1c_pct", 0.1), ("sbp_mmhg", 1.0)):
        x = pd.to_numeric(s[col], errors="coerce").dropna().to_numpy(float)
        assert len(x) and np.allclose(x / p, np.round(x / p), atol=1e-6), col
        c = FIXTURE_SCHEMA.column(col)
        assert x.min() >= c.lower and x.max() <= c.upper
    assert pd.to_numeric(s["hba1c_pct"]).dropna().map(lambda v: len(repr(v))).max() <= 5  # no 15-digit floats


def test_round_to_precision_respects_bounds_and_missing() -> None:
    from synthehr.tools.engines.dpgan.rules import round_to_precision
    from synthehr.tools.store.schema import Column, ColumnType, SourceSchema

    schema = SourceSchema(meta=FIXTURE_SCHEMA.meta, columns=[
        Column(name="a1c", type=ColumnType.continuous, lower=3.05, upper=16, precision=0.1),
        Column(name="chol", type=ColumnType.continuous, lower=50, upper=600, precision=1)])
    f = pd.DataFrame({"a1c": [3.051, 7.26, np.nan, 15.99], "chol": [199.6, 50.2, 600.0, np.nan]})
    out = round_to_precision(f, schema)
    assert out["a1c"].tolist()[:2] == [3.1, 7.3] and np.isnan(out["a1c"][2]) and out["a1c"][3] == 16.0
    assert out["chol"].tolist()[:3] == [200.0, 50.0, 600.0] and np.isnan(out["chol"][3])


def test_coherence_rules_duration_and_presence() -> None:
    from synthehr.tools.engines.dpgan.rules import apply_rules, presence_overrides
    from synthehr.tools.store.sources.nhanes import SCHEMA

    miss = presence_overrides(SCHEMA, np.array([1.0, 0.0, np.nan]))["diabetes_age_at_diagnosis"]
    assert miss.tolist() == [False, True, True]  # present exactly when diagnosed
    names = [c.name for c in SCHEMA.columns]
    f = pd.DataFrame({c: pd.Series([np.nan] * 3, dtype=float) for c in names})
    f["age_years"] = [60.0, 30.0, 50.0]
    f["diabetes_diagnosed"] = [1.0, 1.0, 0.0]
    f["diabetes_age_at_diagnosis"] = [70.0, 5.0, 40.0]
    f["hba1c_pct"] = [7.0, 8.0, 5.0]
    f["insulin_now"] = [1.0, 0.0, 1.0]
    out = apply_rules(f, SCHEMA)
    at = pd.to_numeric(out["diabetes_age_at_diagnosis"]).to_numpy(float)
    dur = pd.to_numeric(out["diabetes_duration_years"]).to_numpy(float)
    age = np.array([60.0, 30.0, 50.0])
    assert at[0] == 60 and at[1] == 18 and np.isnan(at[2])  # <= age, >= 18, absent without diagnosis
    assert (dur[:2] <= age[:2] - 18).all() and np.isnan(dur[2])
    assert int(out["insulin_now"][2]) == 0  # no insulin without a diagnosis


def test_conditional_marginal_loss_sees_a_wrong_small_cohort() -> None:
    """The joint-cell loss barely notices a 5 % cohort fitted wrongly; the per-label loss does."""
    import torch

    from synthehr.tools.engines.dpgan.train import gem_loss

    n = 1000
    lab = torch.zeros(n, 2)
    lab[:950, 0] = 1.0
    lab[950:, 1] = 1.0
    col = torch.zeros(n, 2)
    col[:, 0] = 1.0  # every record in cell 0
    tgt = torch.tensor([[0.95, 0.0], [0.0, 0.05]])  # but the cohort (label 1) lives in cell 1
    probs = {("x", "fine"): col, ("y", "cond"): lab}
    targets = [(("x", "y"), ("fine", "cond"), tgt)]
    joint = float(gem_loss(targets, probs, conditional=False))
    cond = float(gem_loss(targets, probs, conditional=True))
    assert joint == pytest.approx(0.1, abs=1e-6)
    assert cond == pytest.approx(1.0, abs=1e-6)  # (0 + 2) / 2 label values


def test_support_mask_keeps_a_broad_thin_tail_and_drops_an_isolated_spike() -> None:
    """A subgroup's tail spread thinly over several bins (each below the noise) survives; a lone noise
    spike far from the data does not (HbA1c of people with diabetes vs a BMI of 80)."""
    from synthehr.tools.engines.dpgan.structure import support_mask

    fine, sigma = 32, 40.0  # per-cell noise std of the smoothed table: 40 * sqrt(3/8) = 24.5
    t = np.zeros((fine + 1, 2))
    t[3:8, 0] = 400.0  # the bulk
    t[8:14, 1] = 45.0  # a thin tail of label 1: every bin below 2 noise std of a single pooled bin (69)
    t[27, 1] = 60.0  # an isolated spike
    out = support_mask(t, 0, fine, sigma)
    assert (out[8:13, 1] == 45.0).all()  # (its last bin, at the edge of the support, may go)
    assert out[27, 1] == 0.0 and out[3:8, 0].sum() == 2000.0


def test_a_sparse_noisy_margin_is_smoothed_wider_and_keeps_its_bulk() -> None:
    """A column present for few records (age at diagnosis: ~26 records a bin against a noise std of 75)
    gets a wider Gaussian kernel before the support rule; a well-measured one keeps [1, 2, 1]. Smoothing
    keeps the total (edges fold back), and over noise draws the cleaned sparse margin is much closer to the truth."""
    from synthehr.tools.engines.dpgan import structure as S

    fine, sigma = 32, 75.0
    bins = np.arange(fine)
    sparse = np.append(830.0 * np.exp(-0.5 * ((bins - 19.0) / 5.4) ** 2) / (5.4 * np.sqrt(2 * np.pi)), 4700.0)
    dense = np.append(sparse[:fine] * 7.0, 300.0)
    assert len(S.smoothing_kernel(dense, 0, fine, sigma)) == 3
    k = S.smoothing_kernel(sparse, 0, fine, sigma)
    assert len(k) > 3 and (k**2).sum() < 0.375 / 3 and k.sum() == pytest.approx(1.0)  # noise std / sqrt(3)
    assert S.smooth_fine(sparse, 0, fine, sigma)[:fine].sum() == pytest.approx(sparse[:fine].sum())
    assert S.smooth_fine(sparse, 0, fine, sigma)[fine] == sparse[fine]  # the missing cell untouched
    rng = np.random.default_rng(0)
    truth = sparse[:fine] / sparse[:fine].sum()

    def tvd(adaptive: bool) -> float:
        S.ADAPTIVE_SMOOTHING = adaptive
        try:
            out = []
            for _ in range(60):
                est = S.norm_sub(S.clean_fine(sparse + rng.normal(0, sigma, sparse.shape), 0, fine, sigma))[:fine]
                out.append(0.5 * np.abs(est / max(est.sum(), 1e-9) - truth).sum())
            return float(np.mean(out))
        finally:
            S.ADAPTIVE_SMOOTHING = True

    assert tvd(True) < 0.75 * tvd(False)  # measured: 0.31 vs 0.53


def test_a_numeric_column_x_label_table_is_derived_from_its_pooled_margin_and_coarse_label_table(
        model: TrainedGenerator) -> None:
    """Numeric columns: measured as a pooled fine 1-way table plus a coarse x label table (both charged);
    the fine x label table the engine uses is derived from them (post-processing) and flagged so."""
    st = model.hyperparameters["structure"]
    measured = {(tuple(m["columns"]), tuple(m["resolution"])) for m in st["measured_for_derived"]}
    numeric = [c.name for c in FIXTURE_SCHEMA.columns if c.is_numeric and c.name not in CONDS]
    assert numeric
    for c in numeric:
        assert ((c,), ("fine",)) in measured and ((c, "diabetes"), ("coarse", "cond")) in measured
        t = next(t for t in st["tables"] if t["columns"] == [c, "diabetes"])
        assert t["derived"] and t["resolution"] == ["fine", "cond"] and t["shape"][0] > st["bins_coarse"] + 1
    discrete = [t for t in st["tables"] if t["kind"] == "mandatory" and len(t["columns"]) == 2
                and t["columns"][0] not in numeric]
    assert discrete and not any(t["derived"] for t in discrete)


def test_derive_fine_keeps_the_coarse_label_table_and_the_pooled_shape_within_groups() -> None:
    from synthehr.tools.engines.dpgan.structure import derive_fine

    groups = np.array([0, 0, 1, 1, 1, 2, 2, 2])  # 8 fine bins in 3 groups, then the missing cell
    pooled = np.array([1.0, 3.0, 2.0, 2.0, 4.0, 5.0, 0.0, 5.0, 6.0])
    coarse = np.array([[10.0, 2.0], [5.0, 5.0], [1.0, 9.0], [3.0, 3.0]])  # groups + missing, x 2 labels
    out = derive_fine(pooled, coarse, groups, 3)
    assert out.shape == (9, 2)
    back = np.stack([out[:8][groups == g].sum(axis=0) for g in range(3)] + [out[8]])
    assert np.allclose(back, coarse)  # each group's label split is the measured one
    assert np.allclose(out[:2, 1] / out[:2, 1].sum(), [0.25, 0.75])  # the pooled shape inside group 0
    assert out[6].sum() == 0.0  # a bin the pooled margin left empty stays empty
    # no pooled mass in a group: that group's label mass is dropped, not smeared over empty bins
    assert derive_fine(np.zeros(9), coarse, groups, 3).sum() == 0.0


def test_values_spread_inside_their_bins_and_integers_stay_in_their_bin() -> None:
    """Sampling places a value uniformly inside the chosen bin (the learnt offset had collapsed to one
    value per bin); an integer column draws among the integers of the bin, so rounding keeps the bin."""
    import torch

    from synthehr.tools.engines.dpgan.encoding import Block
    from synthehr.tools.engines.dpgan.networks import _within_bin

    age = Block("age_years", "numeric", 0, 1, lower=18.0, upper=80.0, integer=True, bins=32)
    idx = torch.arange(32, dtype=torch.float64).repeat_interleave(200)
    u = torch.rand(idx.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = np.rint((_within_bin(idx, age, u) + 1) / 2 * 62 + 18)
    back = np.clip(np.floor((v - 18) / 62 * 32), 0, 31)
    assert (back == idx.numpy()).all()  # every integer lands in the bin it was drawn for
    assert {79.0, 80.0} <= set(v[idx.numpy() == 31])  # the top bin reaches the top-coded 80
    bmi = Block("bmi_kg_m2", "numeric", 0, 1, lower=12.0, upper=90.0, bins=32)
    x = (_within_bin(idx, bmi, u) + 1) / 2 * 78 + 12
    assert len(np.unique(np.round(x, 1))) > 20 * 32  # not one value per bin


def test_sampling_ignores_a_collapsed_learnt_offset(model: TrainedGenerator) -> None:
    """A generator whose in-bin offset output is the same for every record (what training produced on
    NHANES) still yields values spread over each bin."""
    import torch

    from synthehr.tools.engines.dpgan.networks import sample_parts

    enc = model.encoder
    b = next(b for b in enc.blocks if b.kind == "numeric" and b.bins and not b.integer)
    raw = torch.zeros((4000, max(x.raw_start + x.raw_width for x in enc.blocks)))
    raw[:, b.raw_start] = 60.0  # always the first bin
    raw[:, b.raw_start + b.bins] = 3.0  # a constant offset logit
    numeric, _, _ = sample_parts(raw, enc, torch.Generator().manual_seed(0))
    v = numeric[b.name]
    assert (v >= -1.0).all() and (v <= -1.0 + 2.0 / b.bins + 1e-9).all()  # inside the chosen bin
    assert len(np.unique(np.round(v, 6))) > 1000  # spread, not one value


def test_selected_numeric_pairs_are_copula_denoised_and_coupled_at_sampling(model: TrainedGenerator,
                                                                           tmp_path: Path) -> None:
    """Every selected pair of ordered columns (numeric, or two categories) releases its fitted copula
    correlation, no other table does; coupled bin draws fitted to a numeric pair's correlation reach it
    on the trained generator, are saved with the model and used after loading."""
    import copy

    from synthehr.tools.engines.dpgan.coupling import fit_coupling, normal_scores_corr
    from synthehr.tools.engines.dpgan.structure import CellCoder, ordered_cells

    st = model.hyperparameters["structure"]
    coder = CellCoder(model.encoder, st["bins_fine"], st["bins_coarse"])
    for t in st["tables"]:
        ordered = all(ordered_cells(coder, c, z) is not None for c, z in zip(t["columns"], t["resolution"]))
        assert ("copula_rho" in t) == (t["kind"] == "selected" and ordered), t["columns"]
    released = {"bins_coarse": st["bins_coarse"], "coarse_groups": st["coarse_groups"],
                "tables": [{"columns": ["age_years", "sbp_mmhg"], "kind": "selected", "copula_rho": 0.8}]}
    cp = fit_coupling(model.generator, model.encoder, model.cond_hist, released, seed=0)
    assert cp["columns"] == ["age_years", "sbp_mmhg"]
    assert abs(cp["pairs"][0]["sampled_rho"] - 0.8) < 0.05
    coupled = copy.copy(model)
    coupled.hyperparameters = {**model.hyperparameters, "coupling": cp}
    coupled.save(tmp_path / "m")
    back = TrainedGenerator.load(tmp_path / "m")
    assert back.hyperparameters["coupling"] == cp
    a, b = coupled.sample(3000, seed=5), back.sample(3000, seed=5)
    pd.testing.assert_frame_equal(a, b)
    def ns(df: pd.DataFrame) -> float:
        both = df[["age_years", "sbp_mmhg"]].astype(float).dropna()
        return normal_scores_corr(both["age_years"].to_numpy(), both["sbp_mmhg"].to_numpy())

    assert ns(a) > 0.6
    if not model.hyperparameters.get("coupling"):
        assert ns(a) > ns(model.sample(3000, seed=5)) + 0.05
        coupled.couple = False  # independent draws on request: the uncoupled model's rows
        pd.testing.assert_frame_equal(coupled.sample(300, seed=5), model.sample(300, seed=5))


def test_derive_fine_spreads_a_groups_records_over_bins_the_support_mask_cut() -> None:
    """A thin, wide distribution (diabetes duration): the pooled mask kept one bin of the top group but
    the coarse x label table holds many more records there; they are spread over the group's cut bins
    in proportion to the smoothed noisy counts, not piled on the one bin left."""
    from synthehr.tools.engines.dpgan.structure import derive_fine

    groups = np.array([0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    pooled = np.array([100.0, 100.0, 100.0, 100.0, 50.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    raw = np.array([100.0, 100.0, 100.0, 100.0, 50.0, 120.0, 60.0, 30.0, -10.0, 10.0])
    coarse = np.array([[150.0, 50.0], [150.0, 50.0], [50.0, 200.0]])
    cut = derive_fine(pooled, coarse, groups, 3)
    assert cut[4].sum() == pytest.approx(250.0) and cut[5:].sum() == 0.0  # all of group 2 on one bin
    out = derive_fine(pooled, coarse, groups, 3, raw=raw, noise=10.0)
    assert np.allclose(out.sum(axis=1)[:4], cut.sum(axis=1)[:4])  # groups without a deficit unchanged
    assert out[4:].sum() == pytest.approx(250.0)  # the group keeps its measured records
    assert out[5:].sum() > 0.7 * 250.0 and out[8].sum() == 0.0  # spread where the raw counts are positive
    assert out[9].sum() == 0.0  # nearest cut bins first: 120 + 60 + 30 hold the deficit of 250 - 50
    assert np.allclose(out[4:].sum(axis=0), coarse[2])  # and by label as measured
    # within the noise: no spreading
    assert np.allclose(derive_fine(pooled, coarse, groups, 3, raw=raw, noise=200.0), cut)


def test_derive_fine_thins_a_groups_spread_records_out_going_away_from_the_kept_bins() -> None:
    """Noise in empty bins far from the data (a spike of 150 five bins out, as in the systolic pressures
    at 220-247 mmHg that a cohort once got) must not draw the group's spread records into an island: the
    cut bins' counts are fitted non-increasing going outward before the records are spread."""
    from synthehr.tools.engines.dpgan.structure import _decreasing_fit, derive_fine

    y = np.array([5.0, 7.0, 1.0, -3.0, 9.0])
    fit = _decreasing_fit(y)
    assert np.all(np.diff(fit) <= 1e-12) and fit.mean() == pytest.approx(y.mean())
    assert np.allclose(_decreasing_fit(np.array([3.0, 2.0, 1.0])), [3.0, 2.0, 1.0])
    groups = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    pooled = np.array([200.0, 200.0, 80.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    raw = np.array([200.0, 200.0, 80.0, 40.0, 20.0, -20.0, 0.0, -10.0, 150.0, -30.0])
    coarse = np.array([[300.0, 100.0], [60.0, 100.0]])
    out = derive_fine(pooled, coarse, groups, 2, raw=raw, noise=5.0).sum(axis=1)
    assert out[2:].sum() == pytest.approx(160.0)
    assert np.all(np.diff(out[2:]) <= 1e-9)  # thinning out, no island
    assert out[8] < out[3]
