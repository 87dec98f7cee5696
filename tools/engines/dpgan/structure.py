"""Private structure: AIM/MST-style selection and measurement of 2-way marginals, made consistent.

What is released (all inside one zCDP budget rho, converted to (epsilon_pre, delta_pre) by OpenDP):
  * the mandatory workload: every other column (generated or conditioning) x the first conditioning
    column (the cohort label); with no conditioning column, every column's 1-way marginal. A numeric
    column is measured in two parts: its pooled 1-way table at fine bins (POOLED_SHARE of its share) and
    its table with the label at coarse bins (the rest); its fine x label table is derived from the two
    (`derive_fine`, post-processing);
  * extra pairs (any two columns, generated or conditioning), each picked by the exponential
    mechanism (OpenDP noisy max) among the pairs not yet measured, with AIM's quality score
    ||M(D) - M(estimate)||_1 - sqrt(2/pi) * sigma * cells  (sensitivity 1: the estimate is computed
    from earlier noisy releases only), then measured; with AIM's budget annealing (a measurement that
    barely moves its pair's estimate makes the next rounds 4x richer; the last round spends the rest).
Every table is measured with OpenDP's exact discrete Gaussian (L2 sensitivity 1 under add/remove one
record). Noise and selection draw from OpenDP's secure RNG; nothing here uses the user's seed.

The joint distribution of the conditioning columns (condition vectors are drawn from it) is the
maximum-entropy fit (iterative proportional fitting) to every measured table whose columns are all
conditioning columns: post-processing, no extra cost, and far less noisy than measuring a joint
histogram of hundreds of cells.

Cells: discrete columns use their labels (+ missing); numeric columns use `fine` equal-width bins of
the PUBLIC range (+ missing) in their pooled 1-way table, and `coarse` groups of adjacent fine bins in
their table with the label and in the selected pairs. The groups are the quantiles of the column's DP
fine margin (post-processing of the pooled table, measured first), so coarse cells are not wasted on
the empty tails of a wide public range; the generator's fine softmax maps onto both.

Documented, data-independent rules (n = public row count, d = number of columns, eps = target):
  coarse bins  B = clip(round((n * eps) ** (1/3) / 2), 3, 8)
  fine bins    F = 4 * B
  rounds       T = min(#candidate pairs, 2d) planned: the first round gets 1/T of the pairs' budget,
               annealing may finish in fewer   (candidate: a pair of <= max(64, n * eps / 20) cells)
  rho split    50 % mandatory tables (equal shares, except DEMOGRAPHIC_WEIGHT = 4 shares for each column the
               source declares demographic or a key measure, LABEL_WEIGHT = 4 for the label's own table; a numeric column's
               share is split POOLED_SHARE = 1/3 to its pooled fine table, 2/3 to its coarse x label table),
               50 % selected pairs (MANDATORY_SHARE): per round 10 % selection, 90 % measurement (AIM's);
               no pairs: all to the mandatory tables.
Consistency ("own projection"; mbi 2.0.0 needs jax, kept out of the shared venv): a selected pair of two
ordered columns (`ordered_cells`: numeric bins, or two categories) is shrunk towards its best-fitting
Gaussian copula with the released margins (`copula.shrink_pair`, James-Stein; its fitted correlation is
released with it as `copula_rho`); every other noisy table is made non-negative with its total kept
(norm-sub); all tables are scaled to one total (inverse-variance mean of the tables' totals); the label
margin is the inverse-variance mean of all mandatory tables' label margins, a column's margin is taken
from its (label-fitted) mandatory table, and every table is fitted to those margins by iterative
proportional fitting. Before that, a numeric column's fine bins
are smoothed with a [1, 2, 1] / 4 kernel, or a wider Gaussian when the table holds too few records per
cell for its noise (`smoothing_kernel`, `smooth_fine`), and bins (and the missing cell) outside the support
of the pooled margin (a 5-bin window below 2 noise std) are zeroed (`support_mask`); with a label, this is
done to the pooled 1-way table, whose shape inside each coarse group then splits the coarse x label counts
(`derive_fine`; records of a group the mask left short go to its cut bins along a thinning-out fit).
All of this is post-processing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from synthehr.tools.engines.dpgan.copula import shrink_pair
from synthehr.tools.engines.dpgan.encoding import MISSING, Block, TableEncoder
from synthehr.tools.engines.dpgan.privacy import (gaussian_rho, noisy_max_rho, norm_sub, secure_gaussian_counts,
                                                  secure_noisy_max)

MAX_JOINT_CELLS = 100_000
# A demographic column's table with the label (declared in the source schema) gets this many times the
# share of an ordinary column's: a cohort's age, sex and race/ethnicity make-up is what readers check first.
# So does a declared key measure (the label's defining measurement, e.g. HbA1c): see SourceSchema.key_measures.
DEMOGRAPHIC_WEIGHT = 4.0
# The label's own 1-way table (the cohort sizes): same weight. Without it the label margin is the sum of
# many noisy cells of every column x label table, whose noise grows with the number of cells.
LABEL_WEIGHT = 4.0
# A numeric column's share of the mandatory budget is split between its pooled 1-way table at fine bins
# (this fraction) and its table with the label at coarse bins (the rest); see `measure_structure`.
POOLED_SHARE = 1.0 / 3.0
# Fine bins summed when deciding whether a bin lies inside the data's support (see support_mask).
SUPPORT_WINDOW = 5


# Selection budget annealing (AIM); see measure_structure.
ANNEAL = True
# Wider smoothing of sparse fine tables; see smoothing_kernel.
ADAPTIVE_SMOOTHING = True
# Share of the structure budget for the mandatory tables when pairs are selected (the rest: selection rounds).
MANDATORY_SHARE = 0.5


def selection_rounds(candidates: int, columns: int) -> int:
    """Planned selection rounds: twice the number of columns (at most every candidate pair once). The
    first round gets 1 / rounds of the selection budget; annealing (see measure_structure) may end the
    selection in fewer rounds."""
    return min(candidates, 2 * columns)


def coarse_bins(n: int, epsilon: float) -> int:
    return int(np.clip(round((max(n, 1) * max(epsilon, 1e-9)) ** (1.0 / 3.0) / 2.0), 3, 8))


def fine_bins(n: int, epsilon: float) -> int:
    return 4 * coarse_bins(n, epsilon)


def max_pair_cells(n: int, epsilon: float) -> int:
    return int(max(64, n * epsilon / 20))


def mandatory_weights(schema: Any, conditions: list[str], generated: list[str],
                      numeric: set[str] | None = None) -> list[tuple[tuple, tuple, float]]:
    """The mandatory workload: (columns, resolutions, budget weight) of each table.

    A numeric generated column in `numeric` is measured twice: its pooled 1-way table at fine bins
    (POOLED_SHARE of its weight) and its table with the label at coarse bins (the rest), from which
    its fine column x label table is derived (`derive_fine`)."""
    conds = list(conditions)
    label = conds[0] if conds else None
    if not label:
        return [((c,), ("fine",), 1.0) for c in generated]
    demo = schema.precise_columns()
    numeric = numeric or set()
    out: list[tuple[tuple, tuple, float]] = [((label,), ("cond",), LABEL_WEIGHT)]
    for c in conds[1:] + list(generated):
        w = DEMOGRAPHIC_WEIGHT if c in demo else 1.0
        if c in numeric and c not in conds:
            out.append(((c,), ("fine",), w * POOLED_SHARE))
            out.append(((c, label), ("coarse", "cond"), w * (1.0 - POOLED_SHARE)))
        else:
            out.append(((c, label), ("cond" if c in conds else "fine", "cond"), w))
    return out


@dataclass
class Table:
    """One measured marginal: `cols` with per-column resolution ('fine'/'coarse'/'cond'), noisy counts."""

    cols: tuple[str, ...]
    res: tuple[str, ...]
    counts: np.ndarray  # non-negative, consistent after `project`
    sigma: float
    kind: str  # "mandatory" | "selected"
    clean: bool = False
    derived: bool = False  # computed from other measurements (post-processing), not measured itself
    copula_rho: float | None = None  # selected pair of ordered columns: its fitted copula correlation (`copula`)

    def describe(self) -> dict:
        """Public: the post-processed noisy counts (a DP release) and how they were measured."""
        return {"columns": list(self.cols), "resolution": list(self.res), "kind": self.kind,
                "sigma": round(float(self.sigma), 4), "derived": self.derived, "shape": list(self.counts.shape),
                **({"copula_rho": round(self.copula_rho, 3)} if self.copula_rho is not None else {}),
                "counts": [round(float(v), 2) for v in self.counts.ravel()]}


@dataclass
class Structure:
    tables: list[Table] = field(default_factory=list)
    rho: float = 0.0
    total: float = 0.0
    bins_coarse: int = 3
    bins_fine: int = 12
    rounds: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)
    cond_joint: np.ndarray | None = None
    # what was measured to derive the fine column x label tables: (columns, resolutions, sigma)
    measured: list[tuple[tuple, tuple, float]] = field(default_factory=list)

    def describe(self) -> dict:
        return {"rho": self.rho, "bins_coarse": self.bins_coarse, "bins_fine": self.bins_fine, "rounds": self.rounds,
                "total": round(float(self.total), 2), "coarse_groups": self.groups,
                "measured_for_derived": [{"columns": list(c), "resolution": list(r), "sigma": round(float(sg), 4)}
                                         for c, r, sg in self.measured],
                "tables": [t.describe() for t in self.tables]}


class CellCoder:
    """Record -> cell index of a column at a resolution (public bins or DP-derived groups)."""

    def __init__(self, enc: TableEncoder, fine: int, coarse: int):
        self.enc = enc
        self.fine, self.coarse = fine, coarse
        self.blocks: dict[str, Block] = {b.name: b for b in enc.blocks}
        self.cond: dict[str, Block] = {b.name: b for b in enc.cond_blocks}
        # numeric column -> coarse group of each fine bin (default: equal groups of adjacent bins)
        self.groups: dict[str, np.ndarray] = {}

    def group_of(self, col: str) -> np.ndarray:
        g = self.groups.get(col)
        return g if g is not None else np.arange(self.fine) // (self.fine // self.coarse)

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
        g = self.group_of(col)
        return np.where(fine == self.fine, self.coarse, g[np.minimum(fine, self.fine - 1)])

    def torch_mats(self) -> dict:
        """Cached torch versions of `coarsen_matrix` for every numeric column."""
        import torch

        if getattr(self, "_mats", None) is None:
            self._mats = {name: torch.from_numpy(self.coarsen_matrix(name)) for name, b in self.blocks.items()
                          if b.kind == "numeric"}
        return self._mats

    def coarsen_matrix(self, col: str) -> np.ndarray:
        """(fine cells) x (coarse cells) 0/1 matrix (missing cell maps to missing cell)."""
        b = self.blocks[col]
        g = self.group_of(col)
        m = np.zeros((self.size(col, "fine"), self.size(col, "coarse")), dtype=np.float32)
        m[np.arange(self.fine), g] = 1.0
        if b.has_missing:
            m[self.fine, self.coarse] = 1.0
        return m


def _count(codes: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    flat = np.ravel_multi_index(tuple(codes), sizes) if codes else np.zeros(0, dtype=int)
    return np.bincount(flat, minlength=int(np.prod(sizes))).reshape(sizes).astype(float)


def _convert(margin: np.ndarray, coder: CellCoder, col: str, src: str, dst: str) -> np.ndarray:
    """A 1-way margin from resolution src to dst (fine -> coarse sums the groups)."""
    if src == dst or col in coder.cond or coder.blocks[col].kind == "discrete":
        return margin
    return margin @ coder.coarsen_matrix(col)


def quantile_groups(fine_margin: np.ndarray, fine: int, coarse: int) -> np.ndarray:
    """Group id of each fine bin: contiguous groups holding ~1/coarse of the (DP) mass each."""
    m = np.clip(np.asarray(fine_margin[:fine], dtype=float), 0, None) + 1e-9
    cdf = np.cumsum(m) / m.sum()
    mid = cdf - m / m.sum() / 2
    return np.minimum((mid * coarse).astype(int), coarse - 1)


def measure_structure(frame: pd.DataFrame, enc: TableEncoder, *, rho: float, n_public: float, epsilon: float,
                      fine: int | None = None) -> tuple[Structure, CellCoder]:
    """Select and measure the tables (rho-zCDP in total, checked), then make them consistent."""
    B = coarse_bins(int(n_public), epsilon)
    F = int(fine) if fine else fine_bins(int(n_public), epsilon)
    B = min(B, F)
    coder = CellCoder(enc, F, B)
    conds = [b.name for b in enc.cond_blocks]
    gen_cols = [b.name for b in enc.blocks]
    all_cols = conds + gen_cols
    label = conds[0] if conds else None
    st = Structure(bins_coarse=B, bins_fine=F)
    if rho <= 0:
        st.cond_joint = np.ones(enc.cond_sizes or [1])
        return st, coder
    spent = 0.0
    numeric = {b.name for b in enc.blocks if b.kind == "numeric"} if label else set()
    plan = mandatory_weights(enc.schema, conds, gen_cols, numeric)
    candidates = []
    for a, b in itertools.combinations(all_cols, 2):
        if label in (a, b):
            continue  # already in the mandatory workload
        res = tuple("cond" if c in conds else "coarse" for c in (a, b))
        if coder.size(a, res[0]) * coder.size(b, res[1]) <= max_pair_cells(int(n_public), epsilon):
            candidates.append(((a, b), res))
    rounds = selection_rounds(len(candidates), len(all_cols))
    st.rounds = rounds
    rho_mand = MANDATORY_SHARE * rho if rounds else rho
    rho_sel = rho - rho_mand
    total_w = sum(w for *_, w in plan)

    def noisy(cols: tuple[str, ...], res: tuple[str, ...], r: float) -> tuple[np.ndarray, float]:
        nonlocal spent
        sigma = 1.0 / math.sqrt(2.0 * r)
        true = _count([coder.codes(frame, c, z) for c, z in zip(cols, res)], [coder.size(c, z) for c, z in zip(cols, res)])
        spent += gaussian_rho(sigma)
        return secure_gaussian_counts(true, sigma), sigma

    def measure(cols: tuple[str, ...], res: tuple[str, ...], r: float, kind: str) -> None:
        counts, sigma = noisy(cols, res, r)
        st.tables.append(Table(cols, res, counts, sigma, kind))

    # Stage 1: each numeric column's pooled 1-way table at fine bins; its coarse groups are the quantiles
    # of that (cleaned) DP margin, so the label tables below spend their cells where the data are.
    pooled: dict[str, np.ndarray] = {}
    pooled_raw: dict[str, np.ndarray] = {}
    for cols, res, w in plan:
        if len(cols) == 1 and cols[0] in numeric:
            counts, sigma = noisy(cols, res, rho_mand * w / total_w)
            clean = norm_sub(clean_fine(counts, 0, F, sigma))
            pooled[cols[0]] = clean
            pooled_raw[cols[0]] = smooth_fine(counts, 0, F, sigma)
            coder.groups[cols[0]] = quantile_groups(clean, F, B)
            st.measured.append((cols, res, sigma))
    # Stage 2: the label's own table, discrete columns x label at their cells, numeric columns x label at
    # the coarse groups (fine tables derived from them and the pooled shapes: `derive_fine`).
    for cols, res, w in plan:
        if len(cols) == 1 and cols[0] in numeric:
            continue
        r = rho_mand * w / total_w
        if cols[0] in pooled and res[0] == "coarse":
            counts, sigma = noisy(cols, res, r)
            st.measured.append((cols, res, sigma))
            fine_t = derive_fine(pooled[cols[0]], norm_sub(counts), coder.group_of(cols[0]), coder.coarse,
                                 raw=pooled_raw[cols[0]], noise=sigma)
            # per-cell noise of the derived table such that a row's total carries the coarse row's noise
            eff = sigma * math.sqrt(counts.shape[0] / fine_t.shape[0])
            st.tables.append(Table(cols, ("fine", res[1]), fine_t, eff, "mandatory", clean=True, derived=True))
        else:
            measure(cols, res, r, "mandatory")
    _project(st, coder)
    # Coarse groups of numeric columns measured only at fine bins (no label): from their DP fine margins.
    for t in st.tables:
        if (t.kind == "mandatory" and t.res[0] == "fine" and coder.blocks.get(t.cols[0]) is not None
                and coder.blocks[t.cols[0]].kind == "numeric" and t.cols[0] not in pooled):
            m = t.counts if t.counts.ndim == 1 else t.counts.sum(axis=1)
            coder.groups[t.cols[0]] = quantile_groups(m, F, B)
    st.groups = {k: [int(x) for x in v] for k, v in coder.groups.items()}
    if rounds:
        # AIM's budget annealing (McKenna et al. 2022, Alg. 2): start at rho_sel / rounds per round; when a
        # measurement barely moves the released estimate of its pair (by less than its own expected noise),
        # the next rounds get 4x the budget (half the noise), so larger tables become worth measuring; the
        # round that would leave less than two rounds' budget spends all of it. Every decision reads only
        # released tables (post-processing); the total stays rho_sel (checked below).
        per_round = rho_sel / rounds
        spent_before = spent
        st.rounds = 0
        left = list(candidates)
        truths = {cr: _count([coder.codes(frame, c, z) for c, z in zip(*cr)], [coder.size(c, z) for c, z in zip(*cr)])
                  for cr in left}
        while left and rho_sel - (spent - spent_before) > 1e-9 * rho_sel and (ANNEAL or st.rounds < rounds):
            left_rho = rho_sel - (spent - spent_before)
            if ANNEAL and left_rho < 2.0 * per_round:
                per_round = left_rho
            r_select, r_measure = 0.1 * per_round, 0.9 * per_round
            scale = 1.0 / math.sqrt(2.0 * r_select)  # noisy max: rho = 1 / (2 scale^2) at sensitivity 1
            sigma_m = 1.0 / math.sqrt(2.0 * r_measure)
            ests = [_estimate(st, coder, *cr) for cr in left]
            scores = [float(np.abs(truths[cr] - est).sum()) - math.sqrt(2 / math.pi) * sigma_m * est.size
                      for cr, est in zip(left, ests)]
            pick = secure_noisy_max(np.asarray(scores), scale)
            spent += noisy_max_rho(scale)
            cols, res = left.pop(pick)
            measure(cols, res, r_measure, "selected")
            st.rounds += 1
            _project(st, coder)
            moved = float(np.abs(st.tables[-1].counts - ests[pick]).sum())
            if ANNEAL and moved <= math.sqrt(2 / math.pi) * sigma_m * ests[pick].size:
                per_round *= 4.0
    if spent > rho * (1 + 1e-9):
        raise RuntimeError(f"structure measurements spent rho {spent} > budget {rho}")
    st.rho = spent
    _project(st, coder)
    st.cond_joint = condition_joint(st, coder)
    return st, coder


def derive_fine(pooled: np.ndarray, coarse_by_label: np.ndarray, groups: np.ndarray, coarse: int,
                raw: np.ndarray | None = None, noise: float = 0.0) -> np.ndarray:
    """A numeric column's fine x label table from its pooled fine margin and its coarse x label table
    (post-processing): P(fine bin, label) = P(group, label) * P(fine bin | group) with the within-group
    shape taken from the pooled margin. The missing cell (last, when present) is its own group. A group
    the pooled margin leaves empty (masked as outside the data's support) gets no mass.

    Why: at epsilon ~ 1 a fine table per label value gives the minority value about as many rows per
    cell as noise (NHANES diabetes: ~30 rows against a noise std of ~35), and making such a table
    non-negative cuts its thin tails (a cohort's mean HbA1c came out 0.8 points low). The coarse cells
    hold 4x the rows each, while the fine shape comes from all records. In a no-training simulation
    (`python -m benchmarks.label_tables`: NHANES, Pima, NHEFS and breast cancer columns, 40 noise draws
    each) the minority label's mean error fell from 0.80 to 0.73 SD and sign flips of the label
    difference from 24 % to 16 %, while its fine-bin TVD rose from 0.41 to 0.44 (the shape inside a
    group is the pooled one).

    Cut support (raw, noise given): the pooled margin's support mask can zero most bins of a column whose
    few values spread thinly over a wide range (diabetes duration, 0-60 years, known for 15 % of adults:
    ~30 records a bin against a noise std of ~40), and the group holding those bins then put all its
    records on the one bin left (a cohort's mean duration came out 2 years; real 13). When a value
    group's records in the coarse x label table (`coarse_by_label`, cell noise std `noise`) exceed the
    smoothed noisy pooled counts `raw` of the bins the mask kept in that group by more than twice the
    noise of the group's row, the excess goes to the group's cut bins nearest the kept ones, as many as
    their fitted counts need to hold it, in proportion to those counts. The fit (`_tail_weights`) makes
    the cut bins on each side of the kept ones non-increasing going outward (a least-squares monotone fit
    of the unclipped noisy counts): a clinical column's tail thins out, while the clipped noise of empty
    bins far out had drawn the excess into islands (a diabetes cohort with 5.8 % of its systolic pressures
    at 220-247 mmHg). Paired no-training simulation (NHANES, ε = 1, 30 structure draws, the same noisy
    inputs both ways): mass beyond the real 0.5-99.5 percentiles 1.2 % -> 0.7 % (worst column and draw
    21 % -> 16 %), the diabetic means' RMS error 0.235 -> 0.206 SD, diabetes duration's 0.46 -> 0.28 SD."""
    fine = len(groups)
    extra = pooled.shape[0] - fine
    gg = np.concatenate([np.asarray(groups, dtype=int), coarse + np.arange(extra)])
    pooled = np.asarray(pooled, dtype=float).copy()
    if raw is not None:
        raw = np.asarray(raw, dtype=float)
        rows = coarse_by_label.sum(axis=1)
        thr = 2.0 * float(noise) * math.sqrt(coarse_by_label.shape[1])
        for g in range(min(coarse, coarse_by_label.shape[0])):
            in_g = np.flatnonzero(gg[:fine] == g)
            kept = in_g[pooled[in_g] > 0]
            zeroed = in_g[pooled[in_g] <= 0]
            deficit = float(rows[g] - np.clip(raw[kept], 0, None).sum())
            if deficit <= thr or not len(zeroed) or not len(kept):
                continue
            # nearest cut bins first, until their fitted counts hold the deficit
            fit = _tail_weights(raw, zeroed, kept)
            order = np.argsort(np.abs(zeroed[:, None] - kept[None, :]).min(axis=1), kind="stable")
            use = order[: int(np.searchsorted(np.cumsum(fit[order]), deficit)) + 1]
            if fit[use].sum() > 0:
                pooled[zeroed[use]] += deficit * fit[use] / fit[use].sum()
            else:
                pooled[zeroed[order[0]]] += deficit
    gs = np.bincount(gg, weights=pooled, minlength=coarse_by_label.shape[0])
    within = np.where(gs[gg] > 0, pooled / np.maximum(gs[gg], 1e-300), 0.0)
    return within[:, None] * coarse_by_label[gg, :]


def _decreasing_fit(y: np.ndarray) -> np.ndarray:
    """The least-squares non-increasing sequence closest to y (isotonic regression)."""
    from sklearn.isotonic import isotonic_regression

    return isotonic_regression(np.asarray(y, dtype=float), increasing=False)


def _tail_weights(raw: np.ndarray, zeroed: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Counts for a group's cut bins (`zeroed`, ascending) from the unclipped noisy counts `raw`: the
    bins below the kept ones and those above each get a non-increasing fit going away from the kept
    bins, clipped at 0; cut bins between kept ones keep their clipped count."""
    out = np.zeros(len(zeroed))
    lo, hi = int(kept.min()), int(kept.max())
    left = np.flatnonzero(zeroed < lo)[::-1]
    right = np.flatnonzero(zeroed > hi)
    inner = np.flatnonzero((zeroed > lo) & (zeroed < hi))
    for side in (left, right):
        if len(side):
            out[side] = np.clip(_decreasing_fit(raw[zeroed[side]]), 0, None)
    out[inner] = np.clip(raw[zeroed[inner]], 0, None)
    return out


def _margin(t: Table, axis: int) -> np.ndarray:
    return t.counts.sum(axis=tuple(k for k in range(t.counts.ndim) if k != axis))


def _label_margin(st: Structure) -> np.ndarray | None:
    """Inverse-variance mean of the label margins of all mandatory label tables."""
    ms, ws = [], []
    for t in st.tables:
        if t.kind == "mandatory" and t.res[-1] == "cond" and t.counts.ndim == 2:
            ms.append(_margin(t, 1))
            ws.append(1.0 / (t.sigma**2 * t.counts.shape[0]))
        elif t.kind == "mandatory" and t.res == ("cond",) and t.counts.ndim == 1:
            ms.append(t.counts)  # the label's own table
            ws.append(1.0 / t.sigma**2)
    if not ms:
        return None
    w = np.asarray(ws)
    return (np.stack(ms) * w[:, None]).sum(0) / w.sum()


def _reference_margins(st: Structure, coder: CellCoder) -> dict[str, tuple[str, np.ndarray]]:
    """column -> (resolution, 1-way counts): the label's consensus margin, others from their mandatory table."""
    ref: dict[str, tuple[str, np.ndarray]] = {}
    lab = _label_margin(st)
    for t in st.tables:
        if t.kind == "mandatory":
            ref.setdefault(t.cols[0], (t.res[0], _margin(t, 0)))
            if lab is not None and len(t.cols) == 2:
                ref[t.cols[1]] = ("cond", lab)
    return ref


def _ipf(t: Table, targets: list[tuple[int, np.ndarray]], iters: int) -> None:
    for _ in range(iters if targets else 0):
        for k, m in targets:
            cur = _margin(t, k)
            ratio = np.where(cur > 0, m / np.maximum(cur, 1e-12), 0.0)
            shape = [1] * t.counts.ndim
            shape[k] = -1
            t.counts = t.counts * ratio.reshape(shape)


def smoothing_kernel(counts: np.ndarray, axis: int, fine: int, sigma: float | None) -> np.ndarray:
    """The smoothing kernel for a noisy table's fine-bin axis: [1, 2, 1] / 4, or, when the table holds
    too few records per cell for its noise, a wider Gaussian (post-processing, a rule of released values).

    Why: a column present for few records (age at diabetes diagnosis and duration: 15 % of NHANES adults,
    ~26 records a bin against a noise std of 75 at ε = 1) released a pooled margin that was noise: the
    support rule kept noise runs (ages at diagnosis 10-17) and cut the real bulk; one training gave a
    cohort a mean diabetes duration of 39 years (real 13). Rule: with m the table's released (non-missing)
    records per cell, at least sigma * sqrt(cells) so a near-empty table cannot blow it up, the Gaussian
    bandwidth (in bins) is h = (sigma / m)^2 / (2 sqrt(pi)), which brings a smoothed cell's noise std
    (sigma / sqrt(2 sqrt(pi) h)) down to m; the [1, 2, 1] kernel is kept while h <= 0.75, h is capped at
    fine / 4. Well-measured columns (NHANES BMI, HbA1c: h < 0.2) are unchanged. Label-table simulation
    (`python -m benchmarks.label_tables --draws 40`, four data sets): the derived tables' TVD 0.409 ->
    0.383, mean error 0.73 -> 0.72 SD; breast cancer (398 rows): TVD lower on every column, Pima mixed
    (BMI 0.41 -> 0.89 SD worse, age 0.72 -> 0.53 better); NHANES and NHEFS
    benchmark columns unchanged. NHANES structure draws: diabetes duration's diabetic-mean RMS error
    0.46 -> 0.32 SD."""
    base = np.array([0.25, 0.5, 0.25])
    if not ADAPTIVE_SMOOTHING or not sigma:
        return base
    x = np.moveaxis(np.asarray(counts, dtype=float), axis, 0)
    cells = fine * (int(np.prod(x.shape[1:])) if x.ndim > 1 else 1)
    m = max(float(x[:fine].sum()), float(sigma) * math.sqrt(cells)) / cells
    h = min((float(sigma) / m) ** 2 / (2.0 * math.sqrt(math.pi)), fine / 4.0)
    if h <= 0.75:
        return base
    r = int(math.ceil(3.0 * h))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / h) ** 2)
    return k / k.sum()


def smooth_fine(counts: np.ndarray, axis: int, fine: int, sigma: float | None = None) -> np.ndarray:
    """Post-processing of a noisy table along a numeric column's fine-bin axis: a [1, 2, 1] / 4 kernel
    over adjacent bins (edges reflected; the missing cell untouched), or the wider kernel
    `smoothing_kernel` picks for a sparse table when its noise std `sigma` is given. Noise variance drops
    to sum(kernel^2) (3/8 for [1, 2, 1]) while a smooth distribution barely moves."""
    return _smooth(counts, axis, fine, smoothing_kernel(counts, axis, fine, sigma))


def _smooth(counts: np.ndarray, axis: int, fine: int, k: np.ndarray) -> np.ndarray:
    """`counts` smoothed along its fine-bin axis with kernel k (odd length, centred)."""
    x = np.moveaxis(np.asarray(counts, dtype=float), axis, 0).copy()
    v = x[:fine]
    r = len(k) // 2
    out = np.zeros_like(v)
    if r == 1:  # [1, 2, 1]: each bin averages its neighbours, the edge bin being its own outer one
        padded = v[np.clip(np.arange(-1, fine + 1), 0, fine - 1)]
        for i, kv in enumerate(k):
            out += kv * padded[i : i + fine]
    else:  # wider: each bin's records are spread by the kernel, what falls off an edge folds back in
        src = np.arange(fine)
        for t, kv in zip(range(-r, r + 1), k):
            dst = src + t
            dst = np.where(dst < 0, -dst - 1, np.where(dst >= fine, 2 * fine - 1 - dst, dst))
            np.add.at(out, np.clip(dst, 0, fine - 1), kv * v)
    x[:fine] = out
    return np.moveaxis(x, 0, axis)


def support_mask(counts: np.ndarray, axis: int, fine: int, sigma: float, k: float = 2.0,
                 window: int = SUPPORT_WINDOW, kernel: np.ndarray | None = None) -> np.ndarray:
    """Post-processing: zero a fine bin of a (smoothed) noisy table unless the table's pooled (all-label)
    margin summed over a window of `window` bins centred on it exceeds k times that sum's noise std
    (per smoothed cell sigma times the root of the sum of the kernel's squares, sqrt(3/8) for [1, 2, 1];
    times sqrt(rows * window)). Without it, noise in the many empty
    bins of a wide public range leaks mass into the tails and shifts means (HbA1c 3-20 %, BMI 12-90); the
    window keeps a broad but thin real tail (HbA1c of 7-10 % among people with diabetes, which no single
    bin carries above the noise at epsilon 1) while an isolated noise spike far from the data is dropped.
    In a no-training simulation on NHANES, NHEFS and Pima label tables it lowered the label-conditional
    TVD (0.37 -> 0.32), mean error (0.76 -> 0.63 SD) and sign flips (22 % -> 18 %) against single-bin rules.
    Kept bins form runs; only the run with the most mass and runs rising above twice the threshold stay
    (`_main_support`): an isolated island that just clears the threshold is noise.
    The missing cell: kept if its pooled count or its own count is above the noise."""
    x = np.moveaxis(np.asarray(counts, dtype=float), axis, 0).copy()
    rows = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    sd = sigma * math.sqrt(0.375)  # a [1, 2, 1]-smoothed cell's noise std
    # after a wider kernel (a sparse table, `smoothing_kernel`) a cell's noise std is sigma * |kernel|
    sd_cell = sigma * math.sqrt(float((np.asarray(kernel) ** 2).sum())) if kernel is not None else sd
    body = x[:fine].reshape(fine, -1)
    pooled = body.sum(axis=1)
    w = max(1, int(window))
    wsum = np.convolve(pooled, np.ones(w), mode="same")
    thr = k * sd_cell * math.sqrt(rows * w)
    keep = _main_support(wsum > thr, pooled, wsum > 2.0 * thr)
    if keep.any():
        x[:fine] = np.where(keep[:, None], body, 0.0).reshape(x[:fine].shape)
    if x.shape[0] > fine:
        # the missing cell: a column without missing values must not get noise as "missing"
        miss = x[fine:].reshape(x.shape[0] - fine, -1)
        keep_m = (miss.sum(axis=1, keepdims=True) > k * sd * math.sqrt(rows)) | (miss > k * sd)
        x[fine:] = np.where(keep_m, miss, 0.0).reshape(x[fine:].shape)
    return np.moveaxis(x, 0, axis)


def clean_fine(counts: np.ndarray, axis: int, fine: int, sigma: float) -> np.ndarray:
    """A noisy table's numeric fine-bin axis smoothed (`smooth_fine`) then cut to the data's support
    (`support_mask`); post-processing, applied to every measured fine table before norm-sub."""
    k = smoothing_kernel(counts, axis, fine, sigma)
    return support_mask(_smooth(counts, axis, fine, k), axis, fine, sigma, kernel=k)


def _main_support(keep: np.ndarray, mass: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Of the runs of kept bins, the one holding the most mass, plus any other run that rises above twice
    the threshold somewhere. A clinical column's support is contiguous; an island of bins far from it that
    only just clears the noise threshold is noise. Simulated on NHANES pooled margins at a noise std of 60:
    mass beyond the true 99.5th percentile 1.1 % -> 0.4 % (BMI's SD error 0.5 -> 0.1); over three trainings
    each, the T2D cohort's BMI-waist correlation went from 0.57-0.62 to 0.65-0.73."""
    keep = np.asarray(keep, dtype=bool)
    if not keep.any():
        return keep
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(int), [0]])))
    runs = list(zip(edges[::2], edges[1::2]))
    main = max(runs, key=lambda r: float(mass[r[0]:r[1]].sum()))
    out = np.zeros_like(keep)
    for a, b in runs:
        if (a, b) == main or strong[a:b].any():
            out[a:b] = True
    return out


def _project(st: Structure, coder: CellCoder, iters: int = 30) -> None:
    """Non-negative tables with one total and shared 1-way margins (post-processing, in place)."""
    if not st.tables:
        return
    # mandatory tables first: the selected pairs' copula targets use the margins they release
    ref = None
    for t in sorted(st.tables, key=lambda t: t.kind != "mandatory"):
        if t.clean:
            continue
        cells = [ordered_cells(coder, c, z) for c, z in zip(t.cols, t.res)] if t.kind == "selected" else []
        if len(cells) == 2 and all(v is not None for v in cells):
            ref = ref if ref is not None else _reference_margins(st, coder)
            margins = [(_convert(ref[c][1], coder, c, ref[c][0], z) if c in ref else _margin(t, k))
                       for k, (c, z) in enumerate(zip(t.cols, t.res))]
            t.counts, t.copula_rho = shrink_pair(t.counts, t.sigma, margins[0], margins[1], cells[0], cells[1])
            t.clean = True
            continue
        for k, (c, z) in enumerate(zip(t.cols, t.res)):
            if z == "fine" and c in coder.blocks and coder.blocks[c].kind == "numeric":
                t.counts = clean_fine(t.counts, k, coder.fine, t.sigma)
        t.counts = norm_sub(t.counts)
        t.clean = True
    w = np.array([1.0 / (t.sigma**2 * t.counts.size) for t in st.tables])
    tot = np.array([t.counts.sum() for t in st.tables])
    total = float(max((w * tot).sum() / w.sum(), 1.0))
    st.total = total
    for t in st.tables:
        s = t.counts.sum()
        t.counts = t.counts * (total / s) if s > 0 else np.full(t.counts.shape, total / t.counts.size)
    lab = _label_margin(st)
    if lab is not None:
        lab = lab * (total / max(lab.sum(), 1e-12))
        for t in st.tables:
            if t.kind == "mandatory" and t.counts.ndim == 2:
                _ipf(t, [(1, lab)], 1)
    ref = _reference_margins(st, coder)
    for t in st.tables:
        if t.kind == "mandatory":
            continue
        targets = []
        for k, (c, z) in enumerate(zip(t.cols, t.res)):
            if c in ref:
                rz, m = ref[c]
                targets.append((k, _convert(m, coder, c, rz, z)))
        _ipf(t, targets, iters)


def ordered_cells(coder: CellCoder, col: str, res: str) -> np.ndarray | None:
    """The value cells of a column at a resolution, in order, if the column is ordered (numeric bins, or
    a column with two categories); None for an unordered column. Missing cells are left out."""
    b = coder.cond.get(col) or coder.blocks[col]
    if b.kind == "numeric":
        return np.arange(coder.fine if res == "fine" else coder.coarse)
    values = [i for i, c in enumerate(b.categories) if c != MISSING]
    return np.asarray(values) if len(values) == 2 else None


def condition_joint(st: Structure, coder: CellCoder, iters: int = 50) -> np.ndarray:
    """Max-entropy joint of the conditioning columns fitted to every table inside them (post-processing)."""
    conds = list(coder.cond)
    sizes = [coder.cond[c].width for c in conds]
    if not conds:
        return np.full([1], max(st.total, 1.0))
    if int(np.prod(sizes)) > MAX_JOINT_CELLS:
        raise ValueError(f"the conditioning columns have {int(np.prod(sizes))} joint cells; condition on fewer columns")
    joint = np.full(sizes, max(st.total, 1.0) / float(np.prod(sizes)))
    inside = [t for t in st.tables if all(c in coder.cond for c in t.cols)]
    for _ in range(iters if inside else 0):
        for t in inside:
            axes = [conds.index(c) for c in t.cols]
            cur = joint.sum(axis=tuple(k for k in range(joint.ndim) if k not in axes))
            order = np.argsort(axes)  # cur's axes are in increasing joint-axis order
            tgt = np.transpose(t.counts, order)
            ratio = np.where(cur > 0, tgt / np.maximum(cur, 1e-12), 0.0)
            shape = [sizes[k] if k in axes else 1 for k in range(joint.ndim)]
            joint = joint * ratio.reshape(shape)
    return joint


def _estimate(st: Structure, coder: CellCoder, cols: tuple[str, ...], res: tuple[str, ...]) -> np.ndarray:
    """A data-free estimate of a pair's counts from the released tables: conditional independence given
    the label (product of P(col | label) from the mandatory tables), else independence of 1-way margins."""
    total = st.total or 1.0
    mand = {t.cols[0]: t for t in st.tables if t.kind == "mandatory" and len(t.cols) == 2}
    if mand and all(c in mand for c in cols):
        lab = _label_margin(st)
        lab = lab / max(lab.sum(), 1e-12)
        parts = []
        for c, z in zip(cols, res):
            t = mand[c]
            m = np.stack([_convert(t.counts[:, j], coder, c, t.res[0], z) for j in range(t.counts.shape[1])], axis=0)
            parts.append(m / np.maximum(m.sum(axis=1, keepdims=True), 1e-12))
        return np.einsum("l,la,lb->ab", lab, parts[0], parts[1]) * total
    ref = _reference_margins(st, coder)
    margins = []
    for c, z in zip(cols, res):
        if c in ref:
            rz, m = ref[c]
            m = _convert(m, coder, c, rz, z)
        else:
            m = np.ones(coder.size(c, z))
        margins.append(m / max(m.sum(), 1e-12))
    est = margins[0]
    for m in margins[1:]:
        est = np.multiply.outer(est, m)
    return est * total
