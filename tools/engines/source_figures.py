"""The source's figures as its generator released them under differential privacy, and a synthetic cohort
compared with them.

A trained model keeps what it released about the source (synthehr.tools.engines.dpgan): the noisy joint
histogram of its conditioning columns (e.g. diabetes x sex) and, per generated column, noisy counts over
public cells split by the first conditioning column (numeric columns: equal-width bins of their public
range). From those alone this module estimates the source's figures in the cohort's cells (shares of each
category, means of numeric columns from the bin centres) and compares a synthetic frame with them.

Everything here is post-processing of DP releases: no real record is read and nothing is charged, so the
comparison may go into an answer or onto a shareable data card. (Statistics of the real rows belong only to
the custodian's report.) A numeric mean from the bins is approximate: its resolution is the bin width, which
the result states.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["dp_source_figures", "compare_with_source", "MISSING_LABEL"]

MISSING_LABEL = "<missing>"
REFERENCE = ("the source's figures for the cohort's cells, estimated from what the generator released under "
             "differential privacy (noisy counts); no real record is read")
PRIVACY_COST = "none: post-processing of DP releases"
# A released row is used only when at least this share of its noisy total rose above the noise threshold.
MIN_SIGNAL = 0.95


def _restrict(model: Any, fixed: Mapping[str, Any]) -> tuple[np.ndarray, list[Any], list[Any]]:
    """(the noisy joint histogram restricted to the fixed conditioning values, the axis selectors, the blocks
    of the axes left)."""
    enc = model.encoder
    blocks = list(enc.cond_blocks)
    hist = np.clip(np.asarray(model.cond_hist, dtype=float), 0, None)
    sl: list[Any] = [slice(None)] * len(blocks)
    for j, b in enumerate(blocks):
        if b.name in fixed:
            try:
                sl[j] = int(enc.cond_code(b.name, fixed[b.name]))
            except Exception:  # noqa: BLE001 - a value the encoder does not know: the axis stays whole
                pass
    sub = hist[tuple(sl)] if blocks else hist
    kept = [b for j, b in enumerate(blocks) if not isinstance(sl[j], int)]
    return np.asarray(sub, dtype=float), sl, kept


def _normalised(counts: Mapping[str, float]) -> dict[str, float]:
    kept = {k: max(float(v), 0.0) for k, v in counts.items() if k != MISSING_LABEL}
    total = sum(kept.values())
    return {k: v / total for k, v in kept.items()} if total > 0 else {}


def dp_source_figures(model: Any, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The source's figures in the cells of `fixed` (e.g. {"diabetes": 1}), from the model's DP releases only.

    Returns {"shares": {column: {category: share}}, "means": {column: {"value", "bin_width"}},
    "bins": {column: {"lower", "upper", "shares": [share per bin]}}, "too_noisy": [column], "reference",
    "privacy_cost"}. Shares leave missing values out. A column without released figures is absent; one whose
    released row for these cells the noise swamped (see MIN_SIGNAL) is listed in too_noisy instead."""
    fixed = dict(fixed or {})
    enc = model.encoder
    sub, sl, kept = _restrict(model, fixed)
    shares: dict[str, dict[str, float]] = {}
    unreleased: list[str] = []
    for j, b in enumerate(kept):
        other = tuple(i for i in range(len(kept)) if i != j)
        ref = sub.sum(axis=other) if other else sub
        s = _normalised({str(c): float(v) for c, v in zip(b.categories, np.ravel(ref))})
        if s:
            shares[b.name] = s
        else:  # the DP joint has no mass in these cells: the noise swamped them, say so
            unreleased.append(b.name)
    means: dict[str, dict[str, float]] = {}
    bins: dict[str, dict[str, Any]] = {}
    released = getattr(model, "released_marginals", None) or {}
    columns = released.get("columns") or {}
    if columns:
        n_labels = len(released.get("labels") or [1])
        blocks = list(enc.cond_blocks)
        if blocks and isinstance(sl[0], int):
            weights = np.zeros(n_labels)
            weights[sl[0]] = 1.0
        elif blocks:
            # The first conditioning column is not fixed: its rows are mixed by their DP shares in the cells.
            j = kept.index(blocks[0])
            other = tuple(i for i in range(len(kept)) if i != j)
            weights = np.ravel(sub.sum(axis=other) if other else sub)
        else:
            weights = np.ones(n_labels)
        if weights.sum() > 0:
            weights = weights / weights.sum()
            for name, col in columns.items():
                rows = np.clip(np.asarray(col["counts"], dtype=float), 0, None)
                sig = np.asarray(col.get("signal") or [1.0] * len(rows), dtype=float)
                if float(sig[weights > 0].min()) < MIN_SIGNAL:
                    # A row the noise swamped (it borrowed the pooled shape, or lost much of its mass below the
                    # threshold) does not describe its label: no source figure rather than a wrong one.
                    unreleased.append(name)
                    continue
                if col["kind"] == "numeric":
                    k = int(col["bins"])
                    vals = rows[:, :k]
                    tot = vals.sum(axis=1, keepdims=True)
                    probs = np.divide(vals, tot, out=np.zeros_like(vals), where=tot > 0)
                    w = weights * (tot[:, 0] > 0)
                    if w.sum() <= 0:
                        continue
                    mix = (w[:, None] * probs).sum(axis=0) / w.sum()
                    lo, hi = float(col["lower"]), float(col["upper"])
                    width = (hi - lo) / k
                    centres = lo + (np.arange(k) + 0.5) * width
                    means[name] = {"value": float(mix @ centres), "bin_width": width}
                    bins[name] = {"lower": lo, "upper": hi, "shares": [float(v) for v in mix]}
                elif name not in shares:
                    tot = rows.sum(axis=1, keepdims=True)
                    probs = np.divide(rows, tot, out=np.zeros_like(rows), where=tot > 0)
                    w = weights * (tot[:, 0] > 0)
                    if w.sum() <= 0:
                        continue
                    mix = (w[:, None] * probs).sum(axis=0) / w.sum()
                    s = _normalised(dict(zip(col["categories"], mix)))
                    if s:
                        shares[name] = s
    return {"shares": shares, "means": means, "bins": bins, "too_noisy": unreleased, "reference": REFERENCE,
            "privacy_cost": PRIVACY_COST}


def _synthetic_shares(series: pd.Series, categories: Iterable[str]) -> dict[str, float]:
    values = series.dropna().astype(str)
    if values.empty:
        return {}
    counts = values.value_counts()
    return {c: float(counts.get(c, 0)) / len(values) for c in categories}


def _norm_label(v: Any) -> str:
    """Binary columns are released with labels "0"/"1" and may come back as 0/1, 0.0/1.0 or True/False."""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, float, np.integer, np.floating)) and not (isinstance(v, float) and math.isnan(v)):
        f = float(v)
        return str(int(f)) if f.is_integer() else str(f)
    return str(v)


def compare_with_source(frame: pd.DataFrame, source: Mapping[str, Any], *, mix_columns: Iterable[str] = (),
                        mean_columns: Iterable[str] = (), skip: Iterable[str] = ()) -> dict[str, Any]:
    """The synthetic `frame` against `source` (dp_source_figures): for each of `mix_columns`, the categories'
    shares side by side and the largest gap in percentage points (a numeric column in the released bins);
    for each of `mean_columns`, the synthetic mean and the DP estimate. Columns in `skip` (set on purpose by
    the request: filters, proportions, population targets) and columns without released figures are left out."""
    skip = set(skip)
    mixes: dict[str, Any] = {}
    for col in mix_columns:
        if col in skip or col not in frame.columns:
            continue
        if col in source.get("shares", {}):
            src = source["shares"][col]
            syn = _synthetic_shares(frame[col].map(_norm_label), src.keys())
        elif col in source.get("bins", {}):
            b = source["bins"][col]
            k = len(b["shares"])
            v = pd.to_numeric(frame[col], errors="coerce").dropna().to_numpy(dtype=float)
            if not len(v):
                continue
            idx = np.clip(np.floor((v - b["lower"]) / (b["upper"] - b["lower"]) * k), 0, k - 1).astype(int)
            edges = [b["lower"] + i * (b["upper"] - b["lower"]) / k for i in range(k + 1)]
            names = [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(k)]
            src = dict(zip(names, b["shares"]))
            syn = dict(zip(names, np.bincount(idx, minlength=k) / len(v)))
        else:
            continue
        if not syn:
            continue
        gaps = {c: 100 * (syn.get(c, 0.0) - src[c]) for c in src}
        worst = max(gaps, key=lambda c: abs(gaps[c]))
        mixes[col] = {"max_gap_points": round(abs(gaps[worst]), 1), "largest": worst,
                      "synthetic_pct": round(100 * syn.get(worst, 0.0), 1), "source_pct": round(100 * src[worst], 1),
                      "synthetic_share": {c: round(float(v), 4) for c, v in syn.items()},
                      "source_share": {c: round(float(v), 4) for c, v in src.items()}}
    means: dict[str, Any] = {}
    for col in mean_columns:
        if col in skip or col not in frame.columns or col not in source.get("means", {}):
            continue
        v = pd.to_numeric(frame[col], errors="coerce").astype(float)
        if not v.notna().any():
            continue
        ref = source["means"][col]
        means[col] = {"synthetic": round(float(v.mean()), 2), "source_dp": round(ref["value"], 2),
                      "bin_width": round(ref["bin_width"], 3)}
    return {"mix": mixes, "means": means, "skipped": sorted(skip), "reference": source.get("reference", REFERENCE),
            "privacy_cost": source.get("privacy_cost", PRIVACY_COST)}
