"""Selected pair tables: copula shrinkage of the noisy counts, and coupled bin draws at sampling."""

from __future__ import annotations

import numpy as np
import pytest

from synthehr.tools.engines.dpgan.copula import bvn_cdf, copula_cells, copula_target, james_stein, shrink_pair
from synthehr.tools.engines.dpgan.coupling import (coupling_targets, fit_coupling, nearest_correlation, normal_scores_corr,
                                                   uniforms)
from synthehr.tools.engines.dpgan.privacy import norm_sub


def _ordinal_corr(p: np.ndarray) -> float:
    p = p / p.sum()
    x, y = np.arange(p.shape[0]), np.arange(p.shape[1])
    a, b = p.sum(1), p.sum(0)
    ma, mb = (a * x).sum(), (b * y).sum()
    cov = (p * np.outer(x - ma, y - mb)).sum()
    return float(cov / np.sqrt((a * (x - ma) ** 2).sum() * (b * (y - mb) ** 2).sum()))


@pytest.mark.parametrize("rho", [-0.9, -0.3, 0.0, 0.5, 0.95])
def test_bivariate_normal_cdf_matches_scipy(rho: float) -> None:
    from scipy.stats import multivariate_normal

    pts = np.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 1.5], [2.0, 2.0], [0.3, 0.31], [-8.0, 1.0], [8.0, 8.0]])
    want = multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf(pts)
    got = bvn_cdf(pts[:, 0], pts[:, 1], rho)
    assert np.allclose(got, want, atol=2e-5)


def test_copula_cells_keep_the_margins_and_order_the_dependence() -> None:
    ma, mb = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.25, 0.25, 0.5])
    for rho in (-0.6, 0.0, 0.8):
        cells = copula_cells(ma, mb, rho)
        assert np.allclose(cells.sum(1), ma, atol=1e-6) and np.allclose(cells.sum(0), mb, atol=1e-6)
    assert _ordinal_corr(copula_cells(ma, mb, 0.8)) > 0.5 > _ordinal_corr(copula_cells(ma, mb, 0.0)) > -0.01
    assert _ordinal_corr(copula_cells(ma, mb, -0.6)) < -0.3


def test_copula_fit_recovers_the_correlation_and_keeps_missing_cells_as_measured() -> None:
    ma = np.array([100.0, 300.0, 400.0, 150.0, 50.0])  # last cell: missing
    mb = np.array([200.0, 500.0, 300.0])
    truth = np.zeros((5, 3))
    truth[:4, :] = copula_cells(ma[:4], mb, 0.7) * 950.0
    truth[4, :] = mb * 50.0 / 1000.0
    target, rho = copula_target(truth, ma, mb, np.arange(4), np.arange(3))
    assert abs(rho - 0.7) < 0.03
    assert np.allclose(target[4], truth[4])


def test_missingness_that_depends_on_the_other_column_does_not_flip_the_fit() -> None:
    """Stroke is not asked below age 20: the youngest age group is mostly missing. Fitting the value
    block with the released age margin (which counts the missing records) gave a negative correlation
    for age and stroke; the block's own margins give the real, positive one."""
    rows = np.array([[452, 2, 269], [661, 2, 1], [628, 5, 1], [670, 19, 1], [679, 38, 0], [666, 45, 2],
                     [593, 57, 2], [651, 87, 2]], dtype=float)  # NHANES age groups x stroke (0, 1, missing)
    _, rho = copula_target(rows, rows.sum(1), rows.sum(0), np.arange(8), np.arange(2))
    assert rho > 0.3
    est, _ = shrink_pair(rows, 1e-6, rows.sum(1), rows.sum(0), np.arange(8), np.arange(2))
    assert np.allclose(est, rows, atol=1e-3)  # no noise: the measured table


def test_james_stein_keeps_a_departure_larger_than_the_noise_and_drops_pure_noise() -> None:
    rng = np.random.default_rng(0)
    target = np.full((8, 8), 100.0)
    noise_only = target + rng.normal(0, 10, target.shape)
    assert np.allclose(james_stein(noise_only, target, 10.0), target, atol=5.0)  # shrunk (nearly) to the target
    bump = target.copy()
    bump[0, 0] += 400.0
    kept = james_stein(bump + rng.normal(0, 10, target.shape), target, 10.0)
    assert kept[0, 0] > 400.0  # a real departure survives


def test_shrinkage_beats_norm_sub_on_a_strong_pair_at_engine_noise() -> None:
    """At the noise of a selected pair (std ~ 50 counts per cell, 81 cells, n ~ 5,500) norm-sub loses a
    strong pair's dependence; the copula shrinkage keeps it and is closer to the truth."""
    rng = np.random.default_rng(1)
    m = np.array([0.12, 0.13, 0.12, 0.13, 0.12, 0.13, 0.12, 0.13])
    block = copula_cells(m, m, 0.9) * 5300.0
    truth = np.zeros((9, 9))
    truth[:8, :8] = block
    truth[8, 8] = 230.0  # both missing together
    err_ns, err_cop, tvd_ns, tvd_cop = [], [], [], []
    for _ in range(20):
        y = truth + rng.normal(0, 50.0, truth.shape)
        ma = truth.sum(1) + rng.normal(0, 20.0, 9)
        mb = truth.sum(0) + rng.normal(0, 20.0, 9)
        ns = norm_sub(y)
        cop, rho = shrink_pair(y, 50.0, ma, mb, np.arange(8), np.arange(8))
        assert cop.min() >= 0 and abs(cop.sum() - y.sum()) < 1e-6 * y.sum()
        for est, err, tvd in ((ns, err_ns, tvd_ns), (cop, err_cop, tvd_cop)):
            err.append(abs(_ordinal_corr(est[:8, :8]) - _ordinal_corr(truth[:8, :8])))
            tvd.append(0.5 * np.abs(est / est.sum() - truth / truth.sum()).sum())
    assert np.mean(err_cop) < 0.5 * np.mean(err_ns)
    assert np.mean(tvd_cop) < np.mean(tvd_ns)


def test_ordered_cells_of_numeric_binary_and_unordered_columns() -> None:
    from tests._dpgan_fixture import FIXTURE_SCHEMA
    from synthehr.tools.engines.dpgan.encoding import TableEncoder
    from synthehr.tools.engines.dpgan.structure import CellCoder, ordered_cells

    enc = TableEncoder(FIXTURE_SCHEMA, ["diabetes", "sex"], 16)
    coder = CellCoder(enc, 16, 4)
    num = next(b.name for b in enc.blocks if b.kind == "numeric")
    assert list(ordered_cells(coder, num, "coarse")) == [0, 1, 2, 3]
    assert len(ordered_cells(coder, num, "fine")) == 16
    assert len(ordered_cells(coder, "sex", "cond")) == 2
    many = [b for b in enc.blocks if b.kind == "discrete" and len([c for c in b.categories if c != "<missing>"]) > 2]
    for b in many:
        assert ordered_cells(coder, b.name, "fine") is None


def test_nearest_correlation_is_a_positive_definite_correlation_matrix() -> None:
    r = np.array([[1.0, 0.95, 0.95], [0.95, 1.0, -0.95], [0.95, -0.95, 1.0]])  # not PSD
    out = nearest_correlation(r)
    assert np.allclose(np.diag(out), 1.0)
    assert np.linalg.eigvalsh(out).min() > 0
    np.linalg.cholesky(out)


def test_coupled_draws_keep_each_columns_softmax_and_add_the_dependence() -> None:
    """With the same wide softmax for every record (no systematic signal), independent draws are
    uncorrelated; coupled draws follow each softmax exactly and are correlated as fitted."""
    import torch

    from synthehr.tools.engines.dpgan.encoding import Block
    from synthehr.tools.engines.dpgan.networks import bin_indices, sample_parts

    class Enc:
        blocks = [Block("a", "numeric", 0, 1, lower=0.0, upper=1.0, bins=10, raw_start=0, raw_width=11),
                  Block("b", "numeric", 1, 1, lower=0.0, upper=1.0, bins=10, raw_start=11, raw_width=11)]

    enc = Enc()
    n = 40_000
    logits = torch.linspace(-1.0, 1.0, 10)
    raw = torch.zeros((n, 22))
    raw[:, 0:10] = logits
    raw[:, 11:21] = logits.flip(0)
    chol = np.linalg.cholesky(np.array([[1.0, 0.8], [0.8, 1.0]]))
    coupling = {"columns": ["a", "b"], "cholesky": chol.tolist()}
    gen = torch.Generator().manual_seed(0)
    coupled = uniforms(coupling, n, gen)
    num, _, _ = sample_parts(raw, enc, gen, coupled)
    free, _, _ = sample_parts(raw, enc, torch.Generator().manual_seed(1))
    want = torch.softmax(logits, 0).numpy()
    for v, p in ((num["a"], want), (num["b"], want[::-1])):
        share = np.bincount(np.minimum(((v + 1) / 2 * 10).astype(int), 9), minlength=10) / n
        assert np.abs(share - p).max() < 0.01
    assert abs(normal_scores_corr(free["a"], free["b"])) < 0.03
    assert normal_scores_corr(num["a"], num["b"]) > 0.7
    idx = bin_indices(raw, enc.blocks[0], torch.full((n,), 0.5, dtype=torch.float64))
    assert (idx == int(np.searchsorted(np.cumsum(want), 0.5))).all()


def test_fit_coupling_matches_the_released_pair_correlation() -> None:
    import torch

    from synthehr.tools.engines.dpgan.encoding import Block

    class Enc:
        blocks = [Block("a", "numeric", 0, 1, lower=0.0, upper=1.0, bins=10, raw_start=0, raw_width=11),
                  Block("b", "numeric", 1, 1, lower=0.0, upper=1.0, bins=10, raw_start=11, raw_width=11),
                  Block("c", "discrete", 2, 3, categories=("x", "y", "z"), raw_start=22, raw_width=3)]

        @staticmethod
        def codes_to_onehot(codes: np.ndarray) -> np.ndarray:
            return np.ones((len(codes), 1), dtype=np.float32)

    class Gen(torch.nn.Module):
        noise_dim = 2

        def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((z.shape[0], 25))
            out[:, 0:10] = torch.linspace(-1, 1, 10) * z[:, :1]  # a weak systematic signal shared by a and b
            out[:, 11:21] = torch.linspace(-1, 1, 10) * z[:, :1]
            return out

    structure = {"bins_coarse": 4, "tables": [
        {"columns": ["a", "b"], "kind": "selected", "copula_rho": 0.85},
        {"columns": ["a", "c"], "kind": "selected"},  # unordered: no copula, not coupled
    ]}
    enc = Enc()
    assert coupling_targets(structure, enc) == [("a", "b", 0.85)]
    cp = fit_coupling(Gen(), enc, np.ones(1), structure, seed=0, pool=20_000)
    assert cp is not None and cp["columns"] == ["a", "b"]
    assert abs(cp["pairs"][0]["sampled_rho"] - 0.85) < 0.03
    assert cp == fit_coupling(Gen(), enc, np.ones(1), structure, seed=0, pool=20_000)  # deterministic
    assert fit_coupling(Gen(), enc, np.ones(1), {"bins_coarse": 4, "tables": []}, seed=0) is None


def _structure(monkeypatch: pytest.MonkeyPatch, anneal: bool, rho: float = 0.05):
    from tests._dpgan_fixture import FIXTURE_SCHEMA, fixture_frame
    from synthehr.tools.engines.dpgan import structure as S
    from synthehr.tools.engines.dpgan.encoding import TableEncoder

    monkeypatch.setattr(S, "ANNEAL", anneal)
    frame = fixture_frame(1500, seed=11)
    enc = TableEncoder(FIXTURE_SCHEMA, ["diabetes", "sex"], 16)
    st, _ = S.measure_structure(frame[[c.name for c in FIXTURE_SCHEMA.columns]], enc, rho=rho, n_public=1500,
                                epsilon=1.0, fine=16)
    planned = S.selection_rounds(10**6, len(FIXTURE_SCHEMA.columns))
    return st, [t.sigma for t in st.tables if t.kind == "selected"], planned


def test_pair_selection_anneals_its_budget_and_spends_exactly_what_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """AIM's rule: a measurement that barely moves its pair's released estimate makes the next rounds 4x
    richer (half the noise), so strong but large tables (two numeric columns) become worth measuring;
    the last round spends the rest. The total never exceeds the budget."""
    st, sig, planned = _structure(monkeypatch, anneal=True)
    assert st.rho <= 0.05 * (1 + 1e-9) and st.rho == pytest.approx(0.05, rel=1e-6)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(sig, sig[1:]))  # per-round budget only grows
    assert sig[-1] < 0.5 * sig[0]  # it annealed at least once
    fixed, fsig, _ = _structure(monkeypatch, anneal=False)
    assert fixed.rounds == len(fsig) <= planned and np.allclose(fsig, fsig[0])  # equal rounds as planned
    assert 0 < st.rounds == len(sig) < fixed.rounds  # fewer, richer rounds
    assert fixed.rho == pytest.approx(0.05, rel=1e-6)
