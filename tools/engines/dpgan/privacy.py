"""Privacy helpers: the default delta, the budget split and the DP preprocessing mechanism.

Neighbouring data sets differ by adding or removing one record (the relation Opacus' accountants
use), so one record changes a histogram count by exactly 1: L1 sensitivity 1.

Composition: the preprocessing releases (Laplace: pure epsilon; analytic Gaussian: (epsilon, delta))
and DP-SGD ((epsilon, delta) from the PRV or RDP accountant) compose by basic sequential composition:
    total = (eps_hist + eps_tables + eps_sgd, 0 + delta_tables + delta_sgd).
"""

from __future__ import annotations

import math
import os

import numpy as np


def default_delta(n_rows: int, configured: float | None = None) -> float:
    """delta = min(configured, 1 / n^1.1): always below 1/n for n > 1."""
    auto = 1.0 / (max(int(n_rows), 2) ** 1.1)
    return float(min(configured, auto)) if configured is not None else float(auto)


def split_budget(target_epsilon: float, preprocessing_share: float) -> tuple[float, float]:
    """(epsilon for preprocessing, epsilon for DP-SGD); they sum to the target exactly."""
    if not 0 <= preprocessing_share < 1:
        raise ValueError("preprocessing_share must be in [0, 1)")
    eps_pre = float(target_epsilon) * float(preprocessing_share)
    return eps_pre, float(target_epsilon) - eps_pre


def laplace_histogram(codes: np.ndarray, sizes: list[int], epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """epsilon-DP joint histogram of integer-coded columns (Laplace mechanism, L1 sensitivity 1).

    Returns non-negative noisy counts of shape `sizes` (post-processing: clipping at 0 is free).
    With epsilon == 0 nothing is learnt: a uniform table is returned.
    """
    cells = int(np.prod(sizes)) if sizes else 1
    if cells > 100_000:
        raise ValueError(f"the conditioning columns have {cells} joint cells; condition on fewer columns")
    if epsilon <= 0:
        return np.ones(sizes or [1], dtype=float)
    flat = np.ravel_multi_index(codes.T, sizes) if sizes else np.zeros(len(codes), dtype=int)
    counts = np.bincount(flat, minlength=cells).astype(float)
    noisy = counts + rng.laplace(0.0, 1.0 / epsilon, size=cells)
    return np.clip(noisy, 0.0, None).reshape(sizes or [1])


def histogram_to_probs(hist: np.ndarray) -> np.ndarray:
    total = float(hist.sum())
    if not math.isfinite(total) or total <= 0:
        return np.full(hist.shape, 1.0 / hist.size)
    return hist / total


def laplace_tables(tables: list[np.ndarray], epsilon: float, rng: np.random.Generator) -> list[np.ndarray]:
    """epsilon-DP release of several count tables to which EVERY record adds exactly 1 count each.

    One record changes the concatenated vector by 1 in each table: L1 sensitivity = len(tables), so
    Laplace noise of scale len(tables) / epsilon on every cell gives epsilon-DP for the whole release.
    Returns the raw noisy counts (post-process with `norm_sub`). epsilon == 0 releases nothing (uniform tables).
    """
    if epsilon <= 0:
        return [np.ones_like(t, dtype=float) for t in tables]
    scale = len(tables) / epsilon
    return [t.astype(float) + rng.laplace(0.0, scale, size=t.shape) for t in tables]


def norm_sub(noisy: np.ndarray) -> np.ndarray:
    """Post-process a noisy count vector into non-negative counts with the same (unbiased) total.

    Plain clipping at 0 leaves positive noise in every empty cell (inflating the tails); instead
    subtract the constant d for which sum(max(noisy - d, 0)) equals the noisy total (norm-sub).
    """
    x = np.asarray(noisy, dtype=float).ravel()
    total = float(x.sum())
    if total <= 0 or not np.isfinite(total):
        return np.full(np.shape(noisy), 1.0 / max(x.size, 1))
    v = np.sort(x)[::-1]
    csum = np.cumsum(v)
    k = np.arange(1, v.size + 1)
    d_candidates = (csum - total) / k
    ok = v - d_candidates > 0
    j = int(np.nonzero(ok)[0].max()) if ok.any() else 0
    d = d_candidates[j]
    return np.clip(x - d, 0.0, None).reshape(np.shape(noisy))


def denoise_rows(noisy: np.ndarray, scale: float, k: float = 3.0) -> np.ndarray:
    """Post-process a noisy (labels x cells) table: drop cells below k * Laplace scale (mostly noise; with
    concentrated data they would otherwise spread mass into the public range's empty tails), keep each
    row's noisy total. A row with nothing above the threshold borrows the pooled shape of all rows."""
    x = np.asarray(noisy, dtype=float)
    if scale <= 0:
        return np.clip(x, 0.0, None)
    pooled = x.sum(axis=0)
    pooled_clean = np.where(pooled > k * scale * np.sqrt(x.shape[0]), pooled, 0.0)
    if pooled_clean.sum() <= 0:
        pooled_clean = np.clip(pooled, 0.0, None) + 1e-9
    out = np.empty_like(x)
    for i, row in enumerate(x):
        total = max(float(row.sum()), 1.0)
        clean = np.where(row > k * scale, row, 0.0)
        shape = clean if clean.sum() > 0 else pooled_clean
        out[i] = shape / shape.sum() * total
    return out


def _gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Exact delta of the Gaussian mechanism (Balle & Wang 2018, Theorem 8) at this epsilon."""
    from scipy.stats import norm

    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    return float(norm.cdf(a - b) - math.exp(epsilon) * norm.cdf(-a - b))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest noise std (to 1e-6 relative, rounded up) for which the Gaussian mechanism with this L2
    sensitivity is (epsilon, delta)-DP, by the analytic Gaussian mechanism (Balle & Wang 2018): valid
    for every epsilon > 0 (the classical sqrt(2 ln(1.25/delta)) bound needs epsilon < 1 and is looser)."""
    if epsilon <= 0 or not 0 < delta < 1 or sensitivity <= 0:
        raise ValueError("analytic Gaussian needs epsilon > 0, 0 < delta < 1 and a positive sensitivity")
    lo, hi = 1e-6 * sensitivity, sensitivity
    while _gaussian_delta(epsilon, hi, sensitivity) > delta:
        hi *= 2.0
    for _ in range(200):  # delta is decreasing in sigma: bisect, keep the feasible (upper) end
        mid = (lo + hi) / 2
        if _gaussian_delta(epsilon, mid, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-6 * hi:
            break
    return float(hi)


def gaussian_tables(tables: list[np.ndarray], epsilon: float, delta: float,
                    rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """(epsilon, delta)-DP release of several count tables to which EVERY record adds exactly 1 count each.

    One record changes the concatenated vector by 1 in len(tables) cells: L2 sensitivity sqrt(len(tables))
    (the Laplace release needs L1 = len(tables)); Gaussian noise calibrated by `analytic_gaussian_sigma`.
    Returns (noisy counts, sigma). epsilon == 0 releases nothing (uniform tables, sigma 0).
    """
    if epsilon <= 0 or not tables:
        return [np.ones_like(t, dtype=float) for t in tables], 0.0
    sigma = analytic_gaussian_sigma(epsilon, delta, math.sqrt(len(tables)))
    return [t.astype(float) + rng.normal(0.0, sigma, size=t.shape) for t in tables], sigma


# ---- secure mechanisms (OpenDP) ---------------------------------------------------------------
# Every privacy draw of the engine comes from a cryptographically secure source: the releases before
# training through OpenDP measurements (exact discrete Gaussian / discrete Laplace / noisy max, sampled
# from OpenSSL's CSPRNG inside the OpenDP library, which also closes Mironov's floating-point attack on
# textbook Laplace), DP-SGD noise and Poisson sampling from torch Generators seeded from os.urandom
# (torchcsprng, Opacus' `secure_mode`, does not install on Python 3.11 / torch 2.x; a CPU torch
# Generator is MT19937, so the secret os.urandom seed - never stored - is what makes it unpredictable).
# The user's seed never touches any of these.


def _opendp() -> object:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def secure_seed() -> int:
    """A 63-bit seed from os.urandom (never stored or reported)."""
    return int.from_bytes(os.urandom(8), "big") & ((1 << 63) - 1)


def secure_torch_generator() -> object:
    import torch

    return torch.Generator().manual_seed(secure_seed())


def gaussian_rho(scale: float) -> float:
    """zCDP rho of OpenDP's (discrete) Gaussian measurement on a count vector, L2 sensitivity 1."""
    dp = _opendp()
    vec = dp.vector_domain(dp.atom_domain(T=int))
    return float(dp.m.make_gaussian(vec, dp.l2_distance(T=float), scale=float(scale)).map(1.0))


def secure_gaussian_counts(counts: np.ndarray, scale: float) -> np.ndarray:
    """Exact discrete-Gaussian noise of std `scale` added to integer counts by OpenDP (secure RNG)."""
    dp = _opendp()
    vec = dp.vector_domain(dp.atom_domain(T=int))
    meas = dp.m.make_gaussian(vec, dp.l2_distance(T=float), scale=float(scale))
    flat = np.asarray(counts).ravel().astype(np.int64).tolist()
    return np.asarray(meas(flat), dtype=float).reshape(np.shape(counts))


def noisy_max_rho(scale: float) -> float:
    """zCDP rho of OpenDP's noisy-max selection (exponential mechanism) for scores of sensitivity 1."""
    dp = _opendp()
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.linf_distance(T=float)
    return float(dp.m.make_noisy_max(*space, dp.zero_concentrated_divergence(), scale=float(scale)).map(1.0))


def secure_noisy_max(scores: np.ndarray, scale: float) -> int:
    """Index of the (noisily) highest score, by OpenDP's exponential mechanism (secure RNG)."""
    dp = _opendp()
    space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.linf_distance(T=float)
    meas = dp.m.make_noisy_max(*space, dp.zero_concentrated_divergence(), scale=float(scale))
    return int(meas([float(s) for s in np.asarray(scores, dtype=float)]))


def zcdp_to_epsilon(rho: float, delta: float) -> float:
    """epsilon of a rho-zCDP release at this delta, by OpenDP's zCDP -> approximate-DP conversion."""
    if rho <= 0:
        return 0.0
    dp = _opendp()
    vec = dp.vector_domain(dp.atom_domain(T=int))
    gau = dp.m.make_gaussian(vec, dp.l2_distance(T=float), scale=float(1.0 / math.sqrt(2.0 * rho)))
    return float(dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gau), delta=float(delta)).map(1.0)[0])


def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """The largest rho (to 1e-6 relative, rounded down) whose OpenDP conversion is <= epsilon at delta."""
    if epsilon <= 0:
        return 0.0
    if not 0 < delta < 1:
        raise ValueError("a zCDP budget needs 0 < delta < 1")
    lo, hi = 0.0, max(epsilon, 1e-6)
    while zcdp_to_epsilon(hi, delta) <= epsilon:
        hi *= 2.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if zcdp_to_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-6 * hi:
            break
    return float(lo)
