"""Private structure: AIM/MST-style selection and measurement of 2-way marginals, made consistent.

What is released (all inside one zCDP budget rho, converted to (epsilon_pre, delta_pre) by OpenDP):
  * the joint histogram of the conditioning columns (condition vectors are drawn from it);
  * the mandatory workload: every generated column x the first conditioning column (the cohort
    label); with no conditioning column, every generated column's 1-way marginal;
  * `rounds` extra pairs (any two columns, generated or conditioning), each picked by the
    exponential mechanism (OpenDP noisy max) among the pairs not yet measured, with AIM's quality
    score  ||M(D) - M(estimate)||_1 - sqrt(2/pi) * sigma * cells  (sensitivity 1: the estimate is
    computed from earlier noisy releases only), then measured.
Every table is measured with OpenDP's exact discrete Gaussian (L2 sensitivity 1 under add/remove one
record). Noise and selection draw from OpenDP's secure RNG; nothing here uses the user's seed.

Cells: discrete columns use their labels (+ missing); numeric columns use equal-width bins of the
PUBLIC range (+ missing): `fine` bins in the tables with the label, `coarse` bins in the selected
pairs (a coarse bin is `fine // coarse` adjacent fine bins, so the generator's fine softmax maps onto
both).

Documented, data-independent rules (n = public row count, d = number of columns, eps = target):
  coarse bins  B = clip(round((n * eps) ** (1/3) / 2), 3, 8)
  fine bins    F = 4 * B
  rounds       T = min(#candidate pairs, d)    (candidate: a pair of <= max(64, n * eps / 20) cells)
  rho split    10 % condition histogram, 45 % mandatory tables (equal shares),
               45 % selected pairs: per round 10 % selection, 90 % measurement (AIM's measure_split).
Consistency ("own projection"; mbi 2.0.0 needs jax, kept out of the shared venv): each noisy table is
made non-negative with its total kept (norm-sub); all tables are scaled to one total (inverse-variance
mean of the tables' totals); a column's 1-way margin is taken from its mandatory table (or the
condition histogram), and every other table containing it is fitted to those margins by iterative
proportional fitting. All of this is post-processing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from synthehr.tools.engines.dpgan.encoding import Block, TableEncoder
from synthehr.tools.engines.dpgan.privacy import (gaussian_rho, noisy_max_rho, norm_sub, secure_gaussian_counts,
                                                  secure_noisy_max)


def coarse_bins(n: int, epsilon: float) -> int:
    return int(np.clip(round((max(n, 1) * max(epsilon, 1e-9)) ** (1.0 / 3.0) / 2.0), 3, 8))


def fine_bins(n: int, epsilon: float) -> int:
    return 4 * coarse_bins(n, epsilon)


def max_pair_cells(n: int, epsilon: float) -> int:
    return int(max(64, n * epsilon / 20))


@dataclass
class Table:
    """One measured marginal: `cols` with per-column resolution ('fine'/'coarse'/'cond'), noisy counts."""

    cols: tuple[str, ...]
    res: tuple[str, ...]
    counts: np.ndarray  # non-negative, consistent after `project`
    sigma: float
    kind: str  # "condition" | "mandatory" | "selected"

    def describe(self) -> dict:
        """Public: the post-processed noisy counts (a DP release) and how they were measured."""
        return {"columns": list(self.cols), "resolution": list(self.res), "kind": self.kind,
                "sigma": round(float(self.sigma), 4), "shape": list(self.counts.shape),
                "counts": [round(float(v), 2) for v in self.counts.ravel()]}


@dataclass
class Structure:
    tables: list[Table] = field(default_factory=list)
    rho: float = 0.0
    total: float = 0.0
    bins_coarse: int = 3
    bins_fine: int = 12
    rounds: int = 0

    def describe(self) -> dict:
        return {"rho": self.rho, "bins_coarse": self.bins_coarse, "bins_fine": self.bins_fine, "rounds": self.rounds,
                "tables": [t.describe() for t in self.tables]}


class CellCoder:
    """Record -> cell index of a column at a resolution (public bins; no statistic of the data)."""

    def __init__(self, enc: TableEncoder, fine: int, coarse: int):
        self.enc = enc
        self.fine, self.coarse = fine, coarse
        self.blocks: dict[str, Block] = {b.name: b for b in enc.blocks}
        self.cond: dict[str, Block] = {b.name: b for b in enc.cond_blocks}

    def size(self, col: str, res: str) -> int:
        if col in self.cond:
            return self.cond[col].width
        b = self.blocks[col]
        if b.kind == "discrete":
            return b.width
        k = self.fine if res == "fine" else self.coarse
        return k + (1 if b.has_missing else 0)

    def codes(self, frame: pd.DataFrame, col: str, res: str) -> np.ndarray:
        if col in self.cond:
            return self.enc.discrete_codes(frame[col], self.cond[col])
        b = self.blocks[col]
        if b.kind == "discrete":
            return self.enc.discrete_codes(frame[col], b)
        fine = self.enc.marginal_codes(frame, b, self.fine)  # fine bins, missing -> self.fine
        if res == "fine":
            return fine
        per = self.fine // self.coarse
        return np.where(fine == self.fine, self.coarse, fine // per)


def _count(codes: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    flat = np.ravel_multi_index(tuple(codes), sizes) if codes else np.zeros(0, dtype=int)
    return np.bincount(flat, minlength=int(np.prod(sizes))).reshape(sizes).astype(float)


def _coarsen(margin: np.ndarray, coder: CellCoder, col: str, src: str, dst: str) -> np.ndarray:
    """A 1-way margin from resolution src to dst (fine -> coarse sums adjacent bins)."""
    if src == dst or col in coder.cond or coder.blocks[col].kind == "discrete":
        return margin
    per = coder.fine // coder.coarse
    b = coder.blocks[col]
    vals = margin[: coder.fine].reshape(coder.coarse, per).sum(axis=1)
    return np.concatenate([vals, margin[coder.fine:]]) if b.has_missing else vals


def measure_structure(frame: pd.DataFrame, enc: TableEncoder, *, rho: float, n_public: float, epsilon: float,
                      ) -> tuple[Structure, CellCoder]:
    """Select and measure the tables (rho-zCDP in total, checked), then make them consistent."""
    B, F = coarse_bins(int(n_public), epsilon), fine_bins(int(n_public), epsilon)
    coder = CellCoder(enc, F, B)
    conds = [b.name for b in enc.cond_blocks]
    gen_cols = [b.name for b in enc.blocks]
    all_cols = conds + gen_cols
    label = conds[0] if conds else None
    st = Structure(bins_coarse=B, bins_fine=F)
    if rho <= 0:
        return st, coder
    spent = 0.0
    mandatory = [((c, label), ("fine", "cond")) for c in gen_cols] if label else [((c,), ("fine",)) for c in gen_cols]
    candidates = []
    for a, b in itertools.combinations(all_cols, 2):
        if label and label in (a, b) and (a in gen_cols or b in gen_cols):
            continue  # already in the mandatory workload
        if a in conds and b in conds:
            continue  # inside the condition histogram
        res = tuple("cond" if c in conds else "coarse" for c in (a, b))
        if coder.size(a, res[0]) * coder.size(b, res[1]) <= max_pair_cells(int(n_public), epsilon):
            candidates.append(((a, b), res))
    rounds = min(len(candidates), len(all_cols))
    st.rounds = rounds
    rho_cond = (0.1 * rho if (mandatory or rounds) else rho) if conds else 0.0
    rho_mand = (0.45 * rho if rounds else rho - rho_cond) if mandatory else 0.0
    rho_sel = rho - rho_cond - rho_mand if rounds else 0.0

    def measure(cols: tuple[str, ...], res: tuple[str, ...], r: float, kind: str) -> float:
        sigma = 1.0 / math.sqrt(2.0 * r)
        true = _count([coder.codes(frame, c, z) for c, z in zip(cols, res)], [coder.size(c, z) for c, z in zip(cols, res)])
        st.tables.append(Table(cols, res, secure_gaussian_counts(true, sigma), sigma, kind))
        return gaussian_rho(sigma)

    if conds:
        spent += measure(tuple(conds), tuple("cond" for _ in conds), rho_cond, "condition")
    for cols, res in mandatory:
        spent += measure(cols, res, rho_mand / len(mandatory), "mandatory")
    if rounds:
        per_round = rho_sel / rounds
        r_select, r_measure = 0.1 * per_round, 0.9 * per_round
        scale = 1.0 / math.sqrt(2.0 * r_select)  # noisy max: rho = 1 / (2 scale^2) at sensitivity 1
        sigma_m = 1.0 / math.sqrt(2.0 * r_measure)
        left = list(candidates)
        for _ in range(rounds):
            _project(st, coder)
            scores = []
            for cols, res in left:
                est = _estimate(st, coder, cols, res)
                true = _count([coder.codes(frame, c, z) for c, z in zip(cols, res)],
                              [coder.size(c, z) for c, z in zip(cols, res)])
                scores.append(float(np.abs(true - est).sum()) - math.sqrt(2 / math.pi) * sigma_m * true.size)
            pick = secure_noisy_max(np.asarray(scores), scale)
            spent += noisy_max_rho(scale)
            cols, res = left.pop(pick)
            spent += measure(cols, res, r_measure, "selected")
    if spent > rho * (1 + 1e-9):
        raise RuntimeError(f"structure measurements spent rho {spent} > budget {rho}")
    st.rho = spent
    _project(st, coder)
    return st, coder


def _margin(t: Table, axis: int) -> np.ndarray:
    return t.counts.sum(axis=tuple(k for k in range(t.counts.ndim) if k != axis))


def _reference_margins(st: Structure, coder: CellCoder) -> dict[str, tuple[str, np.ndarray]]:
    """column -> (resolution, 1-way counts) from its mandatory table / the condition histogram."""
    ref: dict[str, tuple[str, np.ndarray]] = {}
    for t in st.tables:
        if t.kind == "condition":
            for k, c in enumerate(t.cols):
                ref[c] = ("cond", _margin(t, k))
    for t in st.tables:
        if t.kind == "mandatory":
            ref.setdefault(t.cols[0], (t.res[0], _margin(t, 0)))
    return ref


def _project(st: Structure, coder: CellCoder, iters: int = 30) -> None:
    """Non-negative tables with one total and shared 1-way margins (post-processing, in place)."""
    if not st.tables:
        return
    for t in st.tables:
        if not getattr(t, "_clean", False):
            t.counts = norm_sub(t.counts)
            t._clean = True  # type: ignore[attr-defined]
    w = np.array([1.0 / (t.sigma**2 * t.counts.size) for t in st.tables])
    tot = np.array([t.counts.sum() for t in st.tables])
    total = float(max((w * tot).sum() / w.sum(), 1.0))
    st.total = total
    for t in st.tables:
        s = t.counts.sum()
        t.counts = t.counts * (total / s) if s > 0 else np.full(t.counts.shape, total / t.counts.size)
    ref = _reference_margins(st, coder)
    # The label margin of the mandatory tables must agree with the condition histogram's.
    for t in st.tables:
        if t.kind == "condition":
            continue
        targets = []
        for k, (c, z) in enumerate(zip(t.cols, t.res)):
            if c in ref and not (t.kind == "mandatory" and k == 0):
                rz, m = ref[c]
                targets.append((k, _coarsen(m, coder, c, rz, z) if rz != "cond" else m))
        for _ in range(iters if targets else 0):
            for k, m in targets:
                cur = _margin(t, k)
                ratio = np.where(cur > 0, m / np.maximum(cur, 1e-12), 0.0)
                shape = [1] * t.counts.ndim
                shape[k] = -1
                t.counts = t.counts * ratio.reshape(shape)


def _estimate(st: Structure, coder: CellCoder, cols: tuple[str, ...], res: tuple[str, ...]) -> np.ndarray:
    """A data-free estimate of a pair's counts from the released tables: conditional independence given
    the label (product of P(col | label) from the mandatory tables), else independence of 1-way margins."""
    ref = _reference_margins(st, coder)
    total = st.total or 1.0
    mand = {t.cols[0]: t for t in st.tables if t.kind == "mandatory" and len(t.cols) == 2}
    sizes = [coder.size(c, z) for c, z in zip(cols, res)]
    cond_t = next((t for t in st.tables if t.kind == "condition"), None)

    def cond_given_label(c: str, z: str) -> np.ndarray | None:  # (labels, cells) P(c | label)
        if c in mand:
            t = mand[c]
            m = np.stack([_coarsen(t.counts[:, j], coder, c, "fine", z) for j in range(t.counts.shape[1])], axis=0)
            return m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12)
        if cond_t is not None and c in cond_t.cols and cond_t.cols[0] != c:
            k = cond_t.cols.index(c)
            joint = cond_t.counts.sum(axis=tuple(i for i in range(cond_t.counts.ndim) if i not in (0, k)))
            return joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-12)
        return None

    if cond_t is not None and mand:
        lab = _margin(cond_t, 0)
        lab = lab / max(lab.sum(), 1e-12)
        parts = []
        for c, z in zip(cols, res):
            if c == cond_t.cols[0]:
                parts.append(np.eye(len(lab)))
            else:
                p = cond_given_label(c, z)
                if p is None:
                    break
                parts.append(p)
        else:
            est = np.einsum("l,la,lb->ab", lab, parts[0], parts[1]) if len(parts) == 2 else None
            if est is not None:
                return est * total
    margins = []
    for c, z in zip(cols, res):
        if c in ref:
            rz, m = ref[c]
            m = _coarsen(m, coder, c, rz, z) if rz != "cond" else m
        else:
            m = np.ones(coder.size(c, z))
        margins.append(m / max(m.sum(), 1e-12))
    est = margins[0]
    for m in margins[1:]:
        est = np.multiply.outer(est, m)
    return est.reshape(sizes) * total
