"""Sampling calibration: weight the generator's records to the released DP tables (post-processing).

At ε ≈ 1 the DP-SGD discriminator sees mostly noise, and a generator fitted to the DP tables by a
marginal loss matches them only approximately (a column's mean can drift by several units, a strong
pair such as BMI-waist can come out half as correlated). The tables themselves are the best private
estimate of the structure, so sampling corrects for what the generator missed:

  1. draw a pool of `POOL_FACTOR` times the records needed from the generator (conditioned as asked);
  2. rake the pool: find record weights whose weighted cell counts match each released table's
     target (iterative proportional fitting on the records, weights clipped to [1/CLIP, CLIP] times
     the mean so no record dominates);
  3. keep records with probability proportional to their weight, without replacement (no duplicates).
The pool's mix of conditioning cells (drawn from the model's DP joint of the conditioning columns) is
restored at the end of every raking sweep, so calibration never moves the cohort's make-up away from it.

The target of a table for a cohort restricted on conditioning columns R (e.g. diabetes = 1) is the
table conditioned on R: Σ_r w_pool(r) · P̂(table cells | r), where P̂ is the maximum-entropy joint of
R and the table's columns fitted to every released table inside them (a pair of two clinical columns
gets its diabetes-conditional version from the pair and the two column x diabetes tables). A table is
used only when each column of R that it does not contain is linked to each of its generated columns
by a released table; otherwise the generator's own conditional is kept (raking would pull, say,
women's heights towards the all-sex distribution). Filters on generated columns (age >= 65) and
cohort definitions are applied AFTER the calibration, so they select from a calibrated population and
the dependent columns shift as the generator learnt them.

Everything here reads only DP releases (the tables in the model manifest) and synthetic records: no
privacy cost. The user's seed drives the pool and the draw, so a seed reproduces a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from synthehr.tools.engines.dpgan.encoding import TableEncoder

POOL_FACTOR = 4  # records generated per record kept
CLIP = 4.0  # weights stay within [mean / CLIP, mean * CLIP]
RAKE_ITERS = 12
JOINT_ITERS = 30
MAX_JOINT = 200_000


@dataclass
class ReleasedTable:
    cols: tuple[str, ...]
    res: tuple[str, ...]
    probs: np.ndarray  # non-negative, sums to 1
    kind: str = "selected"  # "mandatory" (a column x the label) or "selected" (a pair chosen by the mechanism)


class Calibrator:
    """The released tables of a model plus the public cell coding of records."""

    def __init__(self, enc: TableEncoder, fine: int, coarse: int, groups: dict[str, list[int]],
                 tables: list[ReleasedTable]):
        from synthehr.tools.engines.dpgan.structure import CellCoder

        self.enc = enc
        self.coder = CellCoder(enc, fine, coarse)
        for col, g in (groups or {}).items():
            self.coder.groups[col] = np.asarray(g, dtype=int)
        usable = [t for t in tables if t.probs.sum() > 0 and all(self._known(c) for c in t.cols)]
        demo = enc.schema.precise_columns()
        # Raking order = trust order: the table fitted last in a sweep holds exactly at its end, so the
        # selected pairs go first, the column x label tables after them and the tables the source declares
        # demographic or key measures (4 budget shares each, what a reader checks first) last. In the order of
        # measurement, a diabetes cohort's mean age ended 2 years off its own age x diabetes table (the
        # pairs fitted after it pulled it back towards the generator's); in this order it ends on it.
        self.tables = sorted(usable, key=lambda t: self._trust(t, demo))
        self.conds = set(self.coder.cond)
        self._joint_cache: dict[tuple, np.ndarray] = {}

    @staticmethod
    def _trust(t: ReleasedTable, demo: set[str]) -> int:
        if t.kind != "mandatory":
            return 0
        return 2 if any(c in demo for c in t.cols) else 1

    def _known(self, col: str) -> bool:
        return col in self.coder.cond or col in self.coder.blocks

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_structure(cls, desc: dict | None, enc: TableEncoder) -> "Calibrator | None":
        """From the `structure` entry of a model's hyperparameters (the DP release); None without tables."""
        if not desc or not desc.get("tables"):
            return None
        tables = []
        for t in desc["tables"]:
            counts = np.asarray(t["counts"], dtype=float).reshape(t["shape"])
            counts = np.clip(counts, 0, None)
            s = counts.sum()
            if s <= 0:
                continue
            tables.append(ReleasedTable(tuple(t["columns"]), tuple(t["resolution"]), counts / s,
                                        str(t.get("kind", "selected"))))
        if not tables:
            return None
        return cls(enc, int(desc["bins_fine"]), int(desc["bins_coarse"]), desc.get("coarse_groups") or {}, tables)

    # ---- cells -------------------------------------------------------------------------------
    def _res(self, col: str) -> str:
        return "cond" if col in self.conds else "fine"

    def _size(self, col: str) -> int:
        return self.coder.size(col, self._res(col))

    def _axis_map(self, col: str, res: str) -> np.ndarray:
        """Joint-axis cell of `col` (its finest resolution) -> cell at resolution `res`."""
        n = self._size(col)
        if col in self.conds or self.coder.blocks[col].kind == "discrete" or res == "fine":
            return np.arange(n)
        fine = self.coder.fine
        g = np.asarray(self.coder.group_of(col), dtype=int)
        return np.concatenate([g, [self.coder.coarse] * (n - fine)]).astype(int)

    def _codes(self, frame: pd.DataFrame, col: str, res: str, cache: dict) -> np.ndarray:
        key = (col, res)
        if key not in cache:
            cache[key] = self.coder.codes(frame, col, res)
        return cache[key]

    # ---- targets -------------------------------------------------------------------------------
    def _linked(self, a: str, b: str) -> bool:
        return any(a in t.cols and b in t.cols for t in self.tables)

    def usable(self, t: ReleasedTable, restricted: list[str]) -> bool:
        gen_cols = [c for c in t.cols if c not in self.conds]
        return all(self._linked(r, c) for r in restricted if r not in t.cols for c in gen_cols)

    def _joint(self, cols: tuple[str, ...]) -> np.ndarray | None:
        """Max-entropy joint over `cols` (finest resolutions) fitted to every table inside them."""
        key = tuple(cols)
        if key in self._joint_cache:
            return self._joint_cache[key]
        sizes = [self._size(c) for c in cols]
        if int(np.prod(sizes)) > MAX_JOINT:
            return None
        inside = [t for t in self.tables if set(t.cols) <= set(cols)]
        joint = np.full(sizes, 1.0 / float(np.prod(sizes)))
        grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")
        maps = []
        for t in inside:
            coords = [self._axis_map(c, z)[grids[cols.index(c)]] for c, z in zip(t.cols, t.res)]
            maps.append((np.ravel_multi_index(tuple(coords), t.probs.shape).ravel(), t.probs.ravel()))
        flat = joint.ravel()
        for _ in range(JOINT_ITERS if maps else 0):
            for idx, tgt in maps:
                cur = np.bincount(idx, weights=flat, minlength=tgt.size)
                ratio = np.where(cur > 0, tgt / np.maximum(cur, 1e-300), 0.0)
                flat = flat * ratio[idx]
        joint = flat.reshape(sizes)
        self._joint_cache[key] = joint
        return joint

    def table_target(self, t: ReleasedTable, restricted: list[str], pool_r: np.ndarray | None) -> np.ndarray | None:
        """Target probabilities over t's cells for a pool whose R-cells have weights `pool_r` (R order)."""
        if not restricted:
            return t.probs
        rest = [c for c in t.cols if c not in restricted]
        order = list(restricted) + rest
        if set(restricted) <= set(t.cols):
            src = np.transpose(t.probs, [t.cols.index(c) for c in order])
        else:
            joint = self._joint(tuple(order))
            if joint is None:
                return None
            # non-R table columns from their finest resolution to the table's
            k = len(restricted)
            sizes = list(joint.shape[:k]) + [t.probs.shape[t.cols.index(c)] for c in rest]
            grids = np.meshgrid(*[np.arange(s) for s in joint.shape], indexing="ij")
            coords = list(grids[:k]) + [self._axis_map(c, t.res[t.cols.index(c)])[grids[k + i]]
                                        for i, c in enumerate(rest)]
            src = np.zeros(int(np.prod(sizes)))
            np.add.at(src, np.ravel_multi_index(tuple(coords), sizes).ravel(), joint.ravel())
            src = src.reshape(sizes)
        n_r = int(np.prod(src.shape[: len(restricted)]))
        flat = src.reshape(n_r, -1)
        mass = flat.sum(axis=1, keepdims=True)
        condp = np.where(mass > 0, flat / np.maximum(mass, 1e-300), 0.0)
        tgt = (pool_r.reshape(n_r, 1) * condp).reshape(src.shape)  # over (R..., rest...)
        drop = tuple(i for i, c in enumerate(restricted) if c not in t.cols)
        if drop:
            tgt = tgt.sum(axis=drop)
        kept = [c for c in order if c in t.cols]
        tgt = np.transpose(tgt, [kept.index(c) for c in t.cols])
        s = tgt.sum()
        return tgt / s if s > 0 else None

    # ---- raking ----------------------------------------------------------------------------------
    def weights(self, frame: pd.DataFrame, restricted: list[str], cond_mix: np.ndarray | None = None) -> np.ndarray:
        """Record weights (mean 1) matching the usable tables' targets for this pool.

        cond_mix: counts per joint conditioning cell of the pool as drawn, before records were rejected
        (a rule-derived label that no longer matched): the weighted pool keeps that mix, so a rejection
        rate that differs by cell does not move the sample's condition shares off the DP histogram."""
        m = len(frame)
        w = np.ones(m)
        if m == 0:
            return w
        cache: dict = {}
        restricted = [r for r in restricted if r in self.conds]
        if restricted:
            r_codes = [self._codes(frame, r, "cond", cache) for r in restricted]
            r_sizes = [self._size(r) for r in restricted]
            pool_r = np.bincount(np.ravel_multi_index(tuple(r_codes), r_sizes), minlength=int(np.prod(r_sizes)))
            pool_r = (pool_r / m).reshape(r_sizes)
        else:
            pool_r = None
        plan = []
        for t in self.tables:
            if all(c in self.conds for c in t.cols) and set(t.cols) <= set(restricted):
                continue  # fixed by the condition vectors
            if not self.usable(t, restricted):
                continue
            tgt = self.table_target(t, restricted, pool_r)
            if tgt is None:
                continue
            idx = np.ravel_multi_index(tuple(self._codes(frame, c, z, cache) for c, z in zip(t.cols, t.res)),
                                       t.probs.shape)
            present = np.bincount(idx, minlength=tgt.size) > 0
            tg = np.where(present, tgt.ravel(), 0.0)
            if tg.sum() <= 0:
                continue
            plan.append((idx, tg / tg.sum() * m))
        # The pool's conditioning cells were drawn from the model's DP joint of the conditioning columns (the
        # max-entropy fit of every table inside them): that mix is kept exactly, as the last step of each sweep.
        conds = [c for c in self.coder.cond]
        base = None
        if conds and plan:
            sizes = [self._size(c) for c in conds]
            base = np.ravel_multi_index(tuple(self._codes(frame, c, "cond", cache) for c in conds), sizes)
            base_target = np.bincount(base, minlength=int(np.prod(sizes))).astype(float)
            if cond_mix is not None:
                mix = np.where(base_target > 0, np.asarray(cond_mix, dtype=float).ravel(), 0.0)
                if mix.sum() > 0:
                    base_target = mix / mix.sum() * m
        for _ in range(RAKE_ITERS if plan else 0):
            for idx, tg in plan:
                cur = np.bincount(idx, weights=w, minlength=tg.size)
                ratio = np.where(cur > 0, tg / np.maximum(cur, 1e-300), 1.0)
                w = w * ratio[idx]
                mean = w.mean()
                w = np.clip(w, mean / CLIP, mean * CLIP)
            if base is not None:
                cur = np.bincount(base, weights=w, minlength=base_target.size)
                w = w * np.where(cur > 0, base_target / np.maximum(cur, 1e-300), 1.0)[base]
        return w / w.mean()

    def draw(self, frame: pd.DataFrame, restricted: list[str], keep: int, rng: np.random.Generator,
             cond_mix: np.ndarray | None = None) -> np.ndarray:
        """Indices of `keep` records drawn without replacement, inclusion probability proportional to weight.

        Systematic PPS sampling over a random order: record i is kept with probability exactly
        pi_i = keep * w_i / sum(w) (capped at 1, the excess spread over the rest), so the kept records carry
        the raked distribution. The exponential-key draw used before keeps heavy records less often than
        their weight (at a 4x pool a diabetes cohort's mean age ended 0.9 years further from its table)."""
        m = len(frame)
        keep = int(min(keep, m))
        if keep <= 0:
            return np.zeros(0, int)
        w = np.maximum(self.weights(frame, restricted, cond_mix), 0.0)
        pi = inclusion_probabilities(w, keep)
        order = rng.permutation(m)
        cum = np.cumsum(pi[order])
        points = rng.uniform() + np.arange(keep)
        picks = np.unique(order[np.minimum(np.searchsorted(cum, points, side="right"), m - 1)])
        if len(picks) < keep:  # float round-off at a capped record: top up at random
            rest = np.setdiff1d(np.arange(m), picks)
            picks = np.concatenate([picks, rng.choice(rest, keep - len(picks), replace=False)])
        return np.sort(picks)


def inclusion_probabilities(w: np.ndarray, keep: int) -> np.ndarray:
    """pi_i proportional to w_i with sum keep and every pi_i <= 1 (records at 1 are taken for sure)."""
    w = np.asarray(w, dtype=float)
    if w.sum() <= 0:
        w = np.ones_like(w)
    capped = np.zeros(len(w), dtype=bool)
    pi = np.zeros(len(w))
    for _ in range(len(w)):
        left = keep - capped.sum()
        free = w[~capped].sum()
        pi = np.where(capped, 1.0, left * w / free if free > 0 else 0.0)
        over = (pi > 1.0) & ~capped
        if not over.any():
            break
        capped |= over
    return np.minimum(pi, 1.0)
