"""Benchmark metrics for synthetic tabular data (plain numpy / scikit-learn, no project imports).

Every function takes pandas frames plus a column spec: a list of dicts
``{"name", "type" (continuous|integer|binary|categorical), "lower", "upper", "categories"}``.
Real frames are complete cases (no missing values); synthetic frames may hold missing values or
out-of-domain categories, which the encoders tolerate (missing numbers are imputed with the
median of the frame a model is fitted on; unknown categories encode as all zeros).

Metrics:
- utility: TSTR (train on synthetic, test on real holdout) vs TRTR (train on real, test on the
  same holdout) AUROC, for logistic regression and gradient boosting;
- fidelity: mean per-column complement of the Kolmogorov-Smirnov statistic (numeric columns) and
  of the total variation distance (binary / categorical), synthetic vs real train;
- correlation difference: mean absolute difference of pairwise Pearson correlations (numeric and
  binary columns), synthetic vs real train;
- distance to closest record (DCR): each synthetic row's distance to its nearest real training row
  and to its nearest real holdout row (both reference sets of the same size). A generator that
  copies training rows gets much closer to train than to holdout.

- structure (issue 11): all-pairs 2-way TVD (mean, worst 5), correlation error of the 10 strongest real
  pairs, sign agreement of the label's top-5 predictors, cohort (label == 1) mean differences; these
  come from synthehr.tools.engines.fidelity (the quality report uses the same code).

No function here returns or prints a row: only aggregates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

NUMERIC = ("continuous", "integer")
DISCRETE = ("binary", "categorical")


def _spec_map(spec: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in spec}


def _numeric(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").astype(float).to_numpy()


def _as_str(series: pd.Series) -> pd.Series:
    """Categories as strings; integers stored as floats ("1.0") become "1"."""

    def norm(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return None
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return series.astype(object).map(norm)


# ---- encoding ----------------------------------------------------------------------------------
def encode_features(
    frame: pd.DataFrame,
    spec: Sequence[dict[str, Any]],
    features: Sequence[str],
    *,
    impute_from: pd.DataFrame | None = None,
) -> np.ndarray:
    """Model matrix: numbers as floats (missing -> median of `impute_from`, default `frame`),
    binary as 0/1, categorical one-hot over the declared categories."""
    cols = _spec_map(spec)
    ref = frame if impute_from is None else impute_from
    blocks: list[np.ndarray] = []
    for name in features:
        c = cols[name]
        if c["type"] in NUMERIC or c["type"] == "binary":
            x = _numeric(frame[name])
            if c["type"] == "binary":
                x = np.where(np.isnan(x), np.nan, (x >= 0.5).astype(float))
            if np.isnan(x).any():
                r = _numeric(ref[name])
                fill = np.nanmedian(r) if np.isfinite(r).any() else _midpoint(c)
                x = np.where(np.isnan(x), fill, x)
            blocks.append(x[:, None])
        else:
            s = _as_str(frame[name])
            cats = list(c["categories"])
            blocks.append(np.stack([(s == k).to_numpy(dtype=float) for k in cats], axis=1))
    return np.hstack(blocks) if blocks else np.zeros((len(frame), 0))


def _midpoint(c: dict[str, Any]) -> float:
    if c.get("lower") is not None and c.get("upper") is not None:
        return (float(c["lower"]) + float(c["upper"])) / 2
    return 0.5


def binary_label(frame: pd.DataFrame, label: str) -> np.ndarray:
    """The label as 0/1 ints (values >= 0.5 count as 1; missing counts as 0)."""
    y = _numeric(frame[label])
    return np.where(np.isnan(y), 0, y >= 0.5).astype(int)


# ---- utility -----------------------------------------------------------------------------------
def _classifiers(seed: int) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "lr": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "gb": HistGradientBoostingClassifier(random_state=seed),
    }


def auroc_scores(
    fit_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    spec: Sequence[dict[str, Any]],
    label: str,
    *,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """AUROC on `test_frame` of logistic regression and gradient boosting fitted on `fit_frame`.

    When the fitted frame has a single label class no classifier can rank: AUROC is 0.5 and
    `single_class` is true.
    """
    from sklearn.metrics import roc_auc_score

    features = [c["name"] for c in spec if c["name"] != label]
    y_fit = binary_label(fit_frame, label)
    y_test = binary_label(test_frame, label)
    out: dict[str, Any] = {"single_class": False}
    if len(np.unique(y_fit)) < 2 or len(fit_frame) < 10:
        out.update({"lr": 0.5, "gb": 0.5, "mean": 0.5, "single_class": True})
        return out
    from threadpoolctl import threadpool_limits

    x_fit = encode_features(fit_frame, spec, features)
    x_test = encode_features(test_frame, spec, features, impute_from=fit_frame)
    # One thread: OpenMP spin-waiting on a shared, oversubscribed machine costs far more than it gains.
    with threadpool_limits(limits=threads):
        for key, model in _classifiers(seed).items():
            model.fit(x_fit, y_fit)
            out[key] = float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))
    out["mean"] = (out["lr"] + out["gb"]) / 2
    return out


# ---- fidelity ----------------------------------------------------------------------------------
def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (missing values dropped; 1.0 if a side is empty)."""
    a = np.sort(a[~np.isnan(a)])
    b = np.sort(b[~np.isnan(b)])
    if len(a) == 0 or len(b) == 0:
        return 1.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def tvd(a: pd.Series, b: pd.Series) -> float:
    """Total variation distance of two discrete distributions (missing counts as its own value)."""
    pa = _as_str(a).fillna("<missing>").value_counts(normalize=True)
    pb = _as_str(b).fillna("<missing>").value_counts(normalize=True)
    keys = pa.index.union(pb.index)
    return float(0.5 * np.abs(pa.reindex(keys, fill_value=0) - pb.reindex(keys, fill_value=0)).sum())


def column_fidelity(real: pd.DataFrame, synth: pd.DataFrame, spec: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per column: 1 - KS (numeric) or 1 - TVD (binary/categorical); 1 is a perfect match."""
    out: dict[str, float] = {}
    for c in spec:
        name = c["name"]
        if c["type"] in NUMERIC:
            out[name] = 1.0 - ks_statistic(_numeric(real[name]), _numeric(synth[name]))
        else:
            r, s = real[name], synth[name]
            if c["type"] == "binary":
                r = pd.Series(np.where(np.isnan(_numeric(r)), np.nan, _numeric(r) >= 0.5).astype(float))
                s = pd.Series(np.where(np.isnan(_numeric(s)), np.nan, _numeric(s) >= 0.5).astype(float))
            out[name] = 1.0 - tvd(r, s)
    return out


def correlation_difference(real: pd.DataFrame, synth: pd.DataFrame, spec: Sequence[dict[str, Any]]) -> float:
    """Mean |corr_real - corr_synth| over pairs of numeric/binary columns (a constant column has
    correlation 0 with everything). 0 is a perfect match, 2 the worst."""
    names = [c["name"] for c in spec if c["type"] in NUMERIC or c["type"] == "binary"]
    if len(names) < 2:
        return float("nan")

    def corr(frame: pd.DataFrame) -> np.ndarray:
        x = np.column_stack([_numeric(frame[n]) for n in names])
        x = x[~np.isnan(x).any(axis=1)]
        if len(x) < 3:
            return np.zeros((len(names), len(names)))
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.corrcoef(x, rowvar=False)
        return np.nan_to_num(m, nan=0.0)

    iu = np.triu_indices(len(names), k=1)
    return float(np.mean(np.abs(corr(real)[iu] - corr(synth)[iu])))


# ---- privacy proxy: distance to closest record ---------------------------------------------------
def _distance_matrix_input(frame: pd.DataFrame, spec: Sequence[dict[str, Any]]) -> np.ndarray:
    """Numbers min-max scaled by the declared bounds; binary 0/1; categorical one-hot scaled so that
    a category mismatch counts 1. Missing numbers sit at the middle of the range."""
    blocks: list[np.ndarray] = []
    for c in spec:
        if c["type"] in NUMERIC:
            lo, hi = float(c["lower"]), float(c["upper"])
            x = (np.clip(_numeric(frame[c["name"]]), lo, hi) - lo) / (hi - lo)
            blocks.append(np.nan_to_num(x, nan=0.5)[:, None])
        elif c["type"] == "binary":
            x = _numeric(frame[c["name"]])
            blocks.append(np.nan_to_num((x >= 0.5).astype(float), nan=0.5)[:, None])
        else:
            s = _as_str(frame[c["name"]])
            blocks.append(np.stack([(s == k).to_numpy(float) for k in c["categories"]], axis=1) / math.sqrt(2))
    return np.hstack(blocks)


def dcr(
    synth: pd.DataFrame,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    spec: Sequence[dict[str, Any]],
    *,
    seed: int = 0,
    max_rows: int = 2000,
) -> dict[str, float]:
    """Distance to closest record, synthetic -> train vs synthetic -> holdout.

    The train reference is subsampled to the holdout's size so the two are comparable. Returns the
    medians, their ratio (about 1 when the generator does not memorise; well below 1 when it does),
    the share of synthetic rows closer to train than to holdout (about 0.5 is ideal; ties count
    half) and the share of exact copies of a training row.
    """
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    n_ref = min(len(train), len(holdout), max_rows)
    tr = train.iloc[rng.choice(len(train), n_ref, replace=False)]
    ho = holdout.iloc[rng.choice(len(holdout), n_ref, replace=False)]
    sy = synth if len(synth) <= max_rows else synth.iloc[rng.choice(len(synth), max_rows, replace=False)]
    xs = _distance_matrix_input(sy, spec)
    d_tr = NearestNeighbors(n_neighbors=1, n_jobs=1).fit(_distance_matrix_input(tr, spec)).kneighbors(xs)[0][:, 0]
    d_ho = NearestNeighbors(n_neighbors=1, n_jobs=1).fit(_distance_matrix_input(ho, spec)).kneighbors(xs)[0][:, 0]
    med_tr, med_ho = float(np.median(d_tr)), float(np.median(d_ho))
    closer = np.mean(d_tr < d_ho - 1e-12) + 0.5 * np.mean(np.abs(d_tr - d_ho) <= 1e-12)
    return {
        "dcr_train_median": med_tr,
        "dcr_holdout_median": med_ho,
        "dcr_ratio": med_tr / med_ho if med_ho > 0 else float("nan"),
        "share_closer_to_train": float(closer),
        "exact_match_rate": float(np.mean(d_tr <= 1e-9)),
    }


# ---- all at once ---------------------------------------------------------------------------------
def evaluate(
    synth: pd.DataFrame,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    spec: Sequence[dict[str, Any]],
    label: str,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Every quality metric of one synthetic frame (aggregates only)."""
    missing = [c["name"] for c in spec if c["name"] not in synth.columns]
    if missing:
        raise ValueError(f"synthetic data lacks columns: {', '.join(missing)}")
    per_col = column_fidelity(train, synth, spec)
    tstr = auroc_scores(synth, holdout, spec, label, seed=seed)
    return {
        "tstr_lr": tstr["lr"],
        "tstr_gb": tstr["gb"],
        "tstr_mean": tstr["mean"],
        "tstr_single_class": tstr["single_class"],
        "fidelity": float(np.mean(list(per_col.values()))),
        "fidelity_per_column": per_col,
        "corr_diff": correlation_difference(train, synth, spec),
        "synthetic_label_rate": float(binary_label(synth, label).mean()) if len(synth) else float("nan"),
        "synthetic_missing_rate": float(synth[[c["name"] for c in spec]].isna().to_numpy().mean()) if len(synth) else 1.0,
        **dcr(synth, train, holdout, spec, seed=seed),
        **structure_metrics(synth, holdout, spec, label),
    }


def structure_metrics(synth: pd.DataFrame, real: pd.DataFrame, spec: Sequence[dict[str, Any]], label: str) -> dict[str, Any]:
    """Issue 11's fidelity that cannot hide a broken pair (synthehr.tools.engines.fidelity), vs the real holdout."""
    from synthehr.tools.engines import fidelity as fm

    pairs = fm.all_pairs_tvd(real, synth, spec)
    corr = fm.top_correlation_error(real, synth, spec)
    signs = fm.predictor_signs(real, synth, spec, label)
    pos = fm._labels(real[label]) == "1"
    spos = fm._labels(synth[label]) == "1"
    cohort = fm.cohort_fidelity(real[pos], synth[spos], spec) if pos.any() and spos.any() else {}
    return {"pairs_tvd_mean": pairs["mean"], "pairs_tvd_worst": pairs["worst"][0]["tvd"] if pairs["worst"] else None,
            "pairs_tvd_worst5": pairs["worst"], "top10_corr_err": corr["mean_abs_error"],
            "sign_agreement": signs["agreement"], "reversed_predictors": signs["reversed"],
            "undetermined_predictors": signs["undetermined"],
            "reversed_marginal": signs["marginal"]["reversed"],
            "cohort_max_mean_diff_sd": cohort.get("max_abs_mean_diff_sd")}


def real_reversed(train: pd.DataFrame, holdout: pd.DataFrame, spec: Sequence[dict[str, Any]], label: str) -> list[str]:
    """The holdout's top-5 predictors whose sign the REAL training split already reverses: the same check as a
    synthetic sample's `reversed_predictors`, with the training rows in its place. A synthesizer sees only the
    training split, so these reversals are the real data's own (collinear partial effects fitted on ~100-900
    rows), not the synthesizer's; the report names them apart. Only signs the holdout determines (Wald
    |z| >= 1.96, `fidelity.predictor_signs`) are checked, as for a synthetic sample."""
    from synthehr.tools.engines import fidelity as fm

    return list(fm.predictor_signs(holdout, train, spec, label)["reversed"])


def trtr(train: pd.DataFrame, holdout: pd.DataFrame, spec: Sequence[dict[str, Any]], label: str, *, seed: int = 0) -> dict[str, Any]:
    """The real-data reference: classifiers trained on the real train split, tested on the holdout."""
    return auroc_scores(train, holdout, spec, label, seed=seed)
