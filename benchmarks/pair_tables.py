"""No-training simulation of the engine's selected pair tables (issue 11): norm-sub vs copula shrinkage.

    python -m benchmarks.pair_tables [--draws 10] [--epsilon 1] [--datasets nhanes,pima,nhefs,breast_cancer]
                                     [--sigma-scale 1.0] [--max-pairs 120]

For every pair of ordered columns (numeric, or two categories) of a benchmark data set's training split,
the TRUE coarse 2-way counts get Gaussian noise at the std the engine gives one selected pair at
`--epsilon` (80 % preprocessing share, half of it to the selected pairs, d rounds, 90 % of a round to the
measurement: `pair_sigma`), and the two 1-way margins get the noise of their mandatory tables. Two
post-processings of the same draw, both then fitted to the margins by IPF as the engine does:

  * norm-sub: the engine before v2.2 (non-negative, total kept);
  * copula:   `copula.shrink_pair` (James-Stein shrinkage towards the best-fitting Gaussian copula).

Printed per data set: mean TVD of the estimated table to the true one, and the error of the table's
(ordinal, value cells only) correlation, split into strong pairs (|true corr| >= 0.5) and the rest.
No privacy is involved (a simulation on the real training split).
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np

from benchmarks import data as bdata
from synthehr.tools.engines.dpgan.copula import shrink_pair
from synthehr.tools.engines.dpgan.encoding import TableEncoder
from synthehr.tools.engines.dpgan.privacy import norm_sub, rho_for_epsilon
from synthehr.tools.engines.dpgan.structure import (CellCoder, Table, _ipf, coarse_bins, fine_bins, ordered_cells,
                                                    quantile_groups)


def pair_sigma(n: int, d: int, epsilon: float) -> tuple[float, float]:
    """(noise std of one selected pair, of one ordinary mandatory table) under the engine's budget rules."""
    delta = 1.0 / max(n, 2) ** 1.1
    rho = rho_for_epsilon(0.8 * epsilon, delta / 2)
    r_pair = 0.9 * 0.5 * rho / d
    return 1.0 / math.sqrt(2 * r_pair), 1.0 / math.sqrt(2 * 0.5 * rho / (d + 4))


def ordinal_corr(p: np.ndarray, va: np.ndarray, vb: np.ndarray) -> float:
    q = p[np.ix_(va, vb)]
    q = q / max(float(q.sum()), 1e-12)
    x, y = np.arange(len(va)), np.arange(len(vb))
    a, b = q.sum(1), q.sum(0)
    ma, mb = (a * x).sum(), (b * y).sum()
    cov = (q * np.outer(x - ma, y - mb)).sum()
    den = math.sqrt(max(float((a * (x - ma) ** 2).sum() * (b * (y - mb) ** 2).sum()), 1e-18))
    return float(cov / den)


def ipf(p: np.ndarray, ra: np.ndarray, ca: np.ndarray, iters: int = 30) -> np.ndarray:
    """The engine's fit of a table to its released margins (`structure._ipf`)."""
    t = Table(("a", "b"), ("coarse", "coarse"), np.clip(p, 0, None), 1.0, "selected")
    _ipf(t, [(0, ra), (1, ca)], iters)
    return t.counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sigma-scale", type=float, default=1.0, help="multiplies every noise std (1e-9: no noise)")
    ap.add_argument("--datasets", default="nhanes,pima,nhefs,breast_cancer")
    ap.add_argument("--max-pairs", type=int, default=120, help="pairs per data set (the first ones, in column order)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        bd = bdata.load(name)
        train, _ = bdata.split(bd, 0)
        n = len(train)
        f, b = fine_bins(n, args.epsilon), coarse_bins(n, args.epsilon)
        enc = TableEncoder(bd.schema, [bd.label], f)
        coder = CellCoder(enc, f, b)
        cols = [c.name for c in bd.schema.columns]
        d = len(cols)
        sig_pair, sig_mand = (s * args.sigma_scale for s in pair_sigma(n, d, args.epsilon))
        for blk in enc.blocks:
            if blk.kind == "numeric":
                fm = np.bincount(coder.codes(train, blk.name, "fine"), minlength=coder.size(blk.name, "fine"))
                coder.groups[blk.name] = quantile_groups(fm.astype(float), f, b)
        res = {c: ("cond" if c == bd.label else "coarse") for c in cols}
        ordered = [c for c in cols if ordered_cells(coder, c, res[c]) is not None]
        rows: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for a, c in list(itertools.combinations(ordered, 2))[: args.max_pairs]:
            za, zc = res[a], res[c]
            ka, kc = coder.size(a, za), coder.size(c, zc)
            codes = coder.codes(train, a, za) * kc + coder.codes(train, c, zc)
            t = np.bincount(codes, minlength=ka * kc).reshape(ka, kc).astype(float)
            va, vc = ordered_cells(coder, a, za), ordered_cells(coder, c, zc)
            tc = ordinal_corr(t, va, vc)
            strong = abs(tc) >= 0.5
            for _ in range(args.draws):
                y = t + rng.normal(0, sig_pair, t.shape)
                # 1-way margins: the mandatory table's rows summed over the label (~2 cells each)
                ra = norm_sub(t.sum(1) + rng.normal(0, sig_mand * math.sqrt(2), ka))
                ca = norm_sub(t.sum(0) + rng.normal(0, sig_mand * math.sqrt(2), kc))
                tot = max(float(y.sum()), 1.0)
                ra, ca = ra * tot / max(ra.sum(), 1e-9), ca * tot / max(ca.sum(), 1e-9)
                for method in ("norm-sub", "copula"):
                    if method == "norm-sub":
                        est = norm_sub(y)
                    else:
                        est, _ = shrink_pair(y, sig_pair, ra, ca, va, vc)
                    p = ipf(est, ra, ca)
                    tvd = 0.5 * float(np.abs(p / p.sum() - t / t.sum()).sum())
                    rows.setdefault((method, strong), []).append((tvd, ordinal_corr(p, va, vc) - tc))
        print(f"{name}: n = {n}, {len(ordered)} ordered columns, coarse bins {b}, pair noise std {sig_pair:.1f}")
        for strong in (True, False):
            for method in ("norm-sub", "copula"):
                arr = np.asarray(rows.get((method, strong), []))
                if not len(arr):
                    continue
                print(f"  {'strong' if strong else 'other '} {method:8s} pairs x draws {len(arr):5d}"
                      f"  TVD {arr[:, 0].mean():.3f}  corr error mean {arr[:, 1].mean():+.3f}  |error| {np.abs(arr[:, 1]).mean():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
