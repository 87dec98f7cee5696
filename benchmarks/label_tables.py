"""No-training simulation of the engine's numeric column x label tables (issue 11).

    python -m benchmarks.label_tables [--draws 40] [--sigma-scale 1.0]

For each numeric column of the four benchmark data sets it takes the TRUE fine x label counts of the
training split, adds Gaussian noise at the per-table noise std the engine uses at epsilon ~ 1 (one
share of the mandatory budget; `--sigma-scale` multiplies it), and compares two estimators of the
minority label's distribution, using the engine's own functions:

  * fine:    one fine x label table (the share of the column), smoothed, support-masked, norm-sub;
  * derived: the pooled fine table (1/3 of the share) plus the coarse x label table (2/3), combined
             by `structure.derive_fine` (what the engine does since v2.1).

Printed per column and on average: TVD of the minority label's fine distribution, the error of its
mean in SDs of the real minority distribution (RMS over draws), and the share of draws in which the
difference of the two labels' means has the wrong sign. No privacy is involved (a simulation on the
real training split); the figures in the engine's docstrings and RESULTS.md come from this script.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from benchmarks import data as bdata
from synthehr.tools.engines.dpgan.encoding import TableEncoder
from synthehr.tools.engines.dpgan.privacy import norm_sub
from synthehr.tools.engines.dpgan.structure import CellCoder, clean_fine, derive_fine, fine_bins, quantile_groups, smooth_fine

# per-table noise std of one mandatory share at epsilon ~ 1 (measured on the engine's structures)
SIGMA = {"nhanes": 40.0, "pima": 23.0, "nhefs": 30.0, "breast_cancer": 41.0}


def fine_estimate(t: np.ndarray, f: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    y = t + rng.normal(0.0, sigma, t.shape)
    return norm_sub(clean_fine(y, 0, f, sigma))


def derived_estimate(t: np.ndarray, f: int, b: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    s1, s2 = sigma * math.sqrt(3.0), sigma * math.sqrt(1.5)  # 1/3 and 2/3 of the share
    noisy = t.sum(axis=1) + rng.normal(0.0, s1, t.shape[0])
    pooled = norm_sub(clean_fine(noisy, 0, f, s1))
    groups = quantile_groups(pooled, f, b)
    gg = np.concatenate([groups, b + np.arange(t.shape[0] - f)])
    coarse = np.zeros((int(gg.max()) + 1, t.shape[1]))
    np.add.at(coarse, gg, t)
    coarse = norm_sub(coarse + rng.normal(0.0, s2, coarse.shape))
    return derive_fine(pooled, coarse, groups, b, raw=smooth_fine(noisy, 0, f, s1), noise=s2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--sigma-scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--datasets", default=",".join(SIGMA), help=f"comma list of {', '.join(SIGMA)}")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    totals: dict[str, list[tuple[float, float, float]]] = {"fine": [], "derived": []}
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        sigma = SIGMA[name]
        bd = bdata.load(name)
        train, _ = bdata.split(bd, 0)
        f = fine_bins(len(train), 1.0)
        b = f // 4
        enc = TableEncoder(bd.schema, [bd.label], f)
        coder = CellCoder(enc, f, b)
        for col in [c for c in bd.schema.columns if c.is_numeric and c.name != bd.label][:8]:
            mids = col.lower + (np.arange(f) + 0.5) * (col.upper - col.lower) / f
            a = coder.codes(train, col.name, "fine")
            lab = coder.codes(train, bd.label, "cond")
            k, n_lab = coder.size(col.name, "fine"), coder.size(bd.label, "cond")
            t = np.bincount(a * n_lab + lab, minlength=k * n_lab).reshape(k, n_lab).astype(float)
            sizes = t[:f].sum(axis=0)
            minor = int(np.argmin(np.where(sizes > 0, sizes, np.inf)))
            major = int(np.argmax(sizes))
            p1, p0 = t[:f, minor] / sizes[minor], t[:f, major] / sizes[major]
            mu1 = float((p1 * mids).sum())
            sd1 = math.sqrt(float((p1 * (mids - mu1) ** 2).sum())) or 1.0
            line = []
            for method in ("fine", "derived"):
                rows = []
                for _ in range(args.draws):
                    s = sigma * args.sigma_scale
                    e = fine_estimate(t, f, s, rng) if method == "fine" else derived_estimate(t, f, b, s, rng)
                    q1 = e[:f, minor] / max(float(e[:f, minor].sum()), 1e-9)
                    q0 = e[:f, major] / max(float(e[:f, major].sum()), 1e-9)
                    flip = float(((q1 - q0) * mids).sum() * ((p1 - p0) * mids).sum() < 0)
                    rows.append((0.5 * float(np.abs(q1 - p1).sum()), (float((q1 * mids).sum()) - mu1) / sd1, flip))
                arr = np.asarray(rows)
                res = (float(np.median(arr[:, 0])), float(np.sqrt((arr[:, 1] ** 2).mean())), float(arr[:, 2].mean()))
                totals[method].append(res)
                line.append(f"{method}: TVD {res[0]:.3f}, mean err {res[1]:.2f} SD, flips {res[2]:.0%}")
            print(f"{name:13s} {col.name:22s} " + " | ".join(line), flush=True)
    for method, rows in totals.items():
        m = np.asarray(rows).mean(axis=0)
        print(f"MEAN {method:8s} TVD {m[0]:.3f}, mean error {m[1]:.2f} SD, sign flips {m[2]:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
