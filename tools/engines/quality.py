"""The quality report of a synthetic sample: fidelity, utility, privacy and clinical validity.

`build_quality_report` compares a synthetic sample with a real held-out split that training never
saw (and with the training split, for the privacy attacks), and writes quality.json, quality.md and
PNG plots into a folder (by convention the model's folder, models/<id>/).

What it measures (knowledge/methods/evaluation-metrics.md explains each):
- fidelity: per-column KS complement (numeric) / TVD complement (binary, categorical) and their
  mean; mean absolute difference of the correlation matrices (numeric + one-hot); missingness
  rates; a cross-validated real-vs-synthetic detection AUC (0.5 = indistinguishable);
- utility: TSTR vs TRTR AUROC for a binary label (logistic regression, gradient boosting);
- privacy: epsilon/delta/accountant spent; Gower distance to the closest record, synthetic ->
  train vs synthetic -> holdout (equal-size samples); exact-copy rate; a distance-based
  membership-inference attack AUC (train vs holdout records scored by their distance to the
  nearest synthetic record);
- clinical validity: share of values inside the profile's / schema's public bounds, cohort hit
  rate, and rule checks (SBP >= DBP, duration <= age, age at diagnosis <= age, BMI = weight/height^2).

The report holds aggregates only: no real row, no real minimum or maximum, and every count of
real records from 1 to 9 is suppressed ("<10"). `flags` names the problems found.

It is a CUSTODIAN REPORT: its aggregates are computed on real records without differential privacy
and are never charged to the ledger, so they are for the data custodian, not for sharing. It is
written under the model folder (models/<id>/), never into a data set folder; `synthehr report`, the
agent and the data card show it only when `custodian_allowed` (privacy.custodian_reports; by default
true only for built-in public sources). What a data set's card may show instead is `dp_fidelity`:
the synthetic records against the DP-released frequencies the model stores (post-processing, free).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthehr.errors import ToolInputError
from synthehr.tools.store.schema import Column, ColumnType, SourceSchema
from synthehr.tools.store.workspace import atomic_write_text, now_iso

REPORT_VERSION = 1
AUDIENCE = "data custodian"
CUSTODIAN_WARNING = "contains non-private statistics of the real data - for the data custodian, not for sharing"
MIN_CELL = 10
# Flag thresholds.
MIA_AUC_FLAG = 0.6
DCR_P5_RATIO_FLAG = 0.5  # flag when the 5th-percentile distance to training is under half that to holdout
DETECTION_AUC_FLAG = 0.9
COLUMN_FIDELITY_FLAG = 0.5
RULE_VIOLATION_FLAG = 0.05
IN_BOUNDS_FLAG = 0.99
UTILITY_GAP_FLAG = 0.1
COPY_RATE_FLAG = 0.01
BMI_TOLERANCE = 0.05  # relative
MARGINALS_PER_PAGE = 16


# ---- small helpers -----------------------------------------------------------------------------
def _f(x: Any, digits: int = 4) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(v) else round(v, digits)


def suppress(count: int, min_cell: int = MIN_CELL) -> int | str:
    """A count of real records for a table: 0 or >= min_cell as is, 1..min_cell-1 as "<10"."""
    count = int(count)
    return count if count == 0 or count >= min_cell else f"<{min_cell}"


def split_holdout(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train / holdout split of real records (same seed and fraction, same split).

    Training must use only the first part; the quality report compares with the second.
    """
    if not 0 <= fraction < 1:
        raise ValueError("holdout fraction must lie in [0, 1)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    k = int(round(len(frame) * fraction))
    hold = np.sort(order[:k])
    train = np.sort(order[k:])
    return frame.iloc[train].reset_index(drop=True), frame.iloc[hold].reset_index(drop=True)


def _common_columns(schema: SourceSchema, *frames: pd.DataFrame) -> list[Column]:
    return [c for c in schema.columns if all(c.name in f.columns for f in frames)]


def _bounds(col: Column, profile: Any) -> tuple[float | None, float | None]:
    if profile is not None:
        for o in profile.observations:
            if o.source_column == col.name and o.lower is not None and o.upper is not None and o.value_type != "categorical":
                return float(o.lower), float(o.upper)
    return col.lower, col.upper


def _numeric(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s.astype(object).where(s.notna(), None), errors="coerce").astype(float)


def _cat(s: pd.Series) -> pd.Series:
    """Categories as plain strings (object dtype), missing as None."""
    return pd.Series([None if pd.isna(v) else str(v) for v in s.astype(object)], index=s.index, dtype=object)


def _sample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= n:
        return frame.reset_index(drop=True)
    return frame.iloc[np.sort(rng.choice(len(frame), n, replace=False))].reset_index(drop=True)


# ---- encoding (public bounds and categories only) ----------------------------------------------
class _Encoder:
    """Rows -> numbers from public metadata: numeric scaled to [0, 1] by the schema's bounds, 0/1 kept,
    categories one-hot, plus a missing indicator per column that has missing values anywhere."""

    def __init__(self, cols: Sequence[Column], frames: Sequence[pd.DataFrame]):
        self.cols = list(cols)
        self.has_missing = {c.name: any(f[c.name].isna().any() for f in frames) for c in self.cols}

    def encode(self, frame: pd.DataFrame, onehot_weight: float = 1.0) -> tuple[np.ndarray, list[str]]:
        parts: list[np.ndarray] = []
        names: list[str] = []
        for c in self.cols:
            s = frame[c.name]
            miss = s.isna().to_numpy()
            if c.is_numeric:
                lo, hi = float(c.lower), float(c.upper)  # type: ignore[arg-type]
                v = ((_numeric(s) - lo) / (hi - lo)).clip(0, 1).fillna(0).to_numpy()
                parts.append(v[:, None])
                names.append(c.name)
            elif c.type is ColumnType.binary:
                parts.append(_numeric(s).fillna(0).to_numpy()[:, None])
                names.append(c.name)
            else:
                vals = _cat(s)
                cats = list(c.categories or [])
                oh = np.stack([(vals == k).to_numpy(dtype=float) for k in cats], axis=1) * onehot_weight
                parts.append(oh)
                names += [f"{c.name}={k}" for k in cats]
            if self.has_missing[c.name]:
                parts.append(miss.astype(float)[:, None])
                names.append(f"{c.name}:missing")
        x = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))
        return x.astype(float), names


def _corr_frame(frame: pd.DataFrame, cols: Sequence[Column]) -> pd.DataFrame:
    """Numeric and 0/1 columns as floats (NaN kept) plus one-hot categories (NaN when missing)."""
    out: dict[str, pd.Series] = {}
    for c in cols:
        if c.is_numeric or c.type is ColumnType.binary:
            out[c.name] = _numeric(frame[c.name]).reset_index(drop=True)
        else:
            vals = _cat(frame[c.name]).reset_index(drop=True)
            for k in c.categories or []:
                out[f"{c.name}={k}"] = (vals == k).astype(float).where(vals.notna())
    return pd.DataFrame(out)


# ---- fidelity ----------------------------------------------------------------------------------
def column_fidelity(real: pd.Series, synth: pd.Series, col: Column) -> dict[str, Any]:
    """KS complement (numeric) or TVD complement (binary / categorical), over non-missing values."""
    from scipy import stats

    if col.is_numeric:
        r, s = _numeric(real).dropna().to_numpy(), _numeric(synth).dropna().to_numpy()
        out: dict[str, Any] = {"metric": "ks_complement", "score": None}
        if len(r) and len(s):
            out["score"] = _f(1 - stats.ks_2samp(r, s).statistic)
        if len(r) >= MIN_CELL:
            out.update(real_mean=_f(r.mean()), real_sd=_f(r.std(ddof=1)) if len(r) > 1 else None, real_median=_f(np.median(r)))
        if len(s):
            out.update(synthetic_mean=_f(s.mean()), synthetic_sd=_f(s.std(ddof=1)) if len(s) > 1 else None,
                       synthetic_median=_f(np.median(s)))
        return out
    if col.type is ColumnType.binary:
        r, s = _numeric(real).dropna(), _numeric(synth).dropna()
        cats: list[Any] = [0.0, 1.0]
    else:
        r, s = _cat(real).dropna(), _cat(synth).dropna()
        cats = list(col.categories or sorted(set(r) | set(s)))
    out = {"metric": "tvd_complement", "score": None}
    if len(r) and len(s):
        pr = np.array([(r == k).mean() for k in cats])
        ps = np.array([(s == k).mean() for k in cats])
        out["score"] = _f(1 - 0.5 * np.abs(pr - ps).sum())
    return out


def _detection_auc(real: np.ndarray, synth: np.ndarray, seed: int, folds: int = 3) -> float | None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    m = min(len(real), len(synth))
    if m < 2 * folds:
        return None
    rng = np.random.default_rng(seed)
    xr = real[rng.choice(len(real), m, replace=False)]
    xs = synth[rng.choice(len(synth), m, replace=False)]
    x = np.vstack([xr, xs])
    y = np.r_[np.zeros(m), np.ones(m)]
    clf = HistGradientBoostingClassifier(max_iter=60, learning_rate=0.15, max_leaf_nodes=15, random_state=seed)
    proba = cross_val_predict(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def fidelity(real: pd.DataFrame, synth: pd.DataFrame, cols: Sequence[Column], enc: _Encoder, seed: int,
             min_cell: int = MIN_CELL) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    per_col = {c.name: column_fidelity(real[c.name], synth[c.name], c) for c in cols}
    scores = [v["score"] for v in per_col.values() if v["score"] is not None]
    cr, cs = _corr_frame(real, cols), _corr_frame(synth, cols)
    corr_r, corr_s = cr.corr(min_periods=min_cell), cs.corr(min_periods=min_cell)  # no correlation from a small cell
    diff = (corr_r - corr_s).abs()
    iu = np.triu_indices(len(diff), k=1)
    vals = diff.to_numpy()[iu]
    ok = ~np.isnan(vals)
    pairs = [(diff.index[i], diff.columns[j]) for i, j in zip(*iu)]
    worst = sorted(((float(v), p) for v, p, k in zip(vals, pairs, ok) if k), reverse=True)[:5]
    mad = float(np.nanmean(vals)) if ok.any() else None
    missing: dict[str, Any] = {}
    gaps = []
    for c in cols:
        rm, sm = int(real[c.name].isna().sum()), int(synth[c.name].isna().sum())
        rrate = rm / len(real) if len(real) else None
        srate = sm / len(synth) if len(synth) else None
        shown = suppress(rm, min_cell)
        entry = {"real_missing": shown, "real_rate": _f(rrate) if not isinstance(shown, str) else None,
                 "synthetic_missing": sm, "synthetic_rate": _f(srate)}
        if rrate is not None and srate is not None:
            gaps.append(abs(rrate - srate))
        missing[c.name] = entry
    x_real, _ = enc.encode(real)
    x_syn, _ = enc.encode(synth)
    det = _detection_auc(x_real, x_syn, seed)
    out = {
        "columns": per_col,
        "marginal_score": _f(np.mean(scores)) if scores else None,
        "correlation": {
            "mean_abs_diff": _f(mad),
            "similarity": _f(1 - mad / 2) if mad is not None else None,
            "pairs": int(ok.sum()),
            "largest_differences": [{"a": a, "b": b, "abs_diff": _f(v)} for v, (a, b) in worst],
        },
        "missingness": {"columns": missing, "mean_abs_rate_diff": _f(np.mean(gaps)) if gaps else None},
        "detection_auc": _f(det),
        "detection_score": _f(1 - 2 * abs(det - 0.5)) if det is not None else None,
    }
    return out, {"real": corr_r, "synthetic": corr_s}


# ---- utility -----------------------------------------------------------------------------------
def _label_vector(s: pd.Series, col: Column) -> tuple[pd.Series, str]:
    """Binary target (1/0, NaN when missing) and what 1 means."""
    if col.type is ColumnType.binary:
        return _numeric(s), f"{col.name} = 1"
    if col.type is ColumnType.categorical and col.categories and len(col.categories) == 2:
        v = _cat(s)
        return (v == col.categories[1]).astype(float).where(v.notna()), f"{col.name} = {col.categories[1]}"
    raise ToolInputError(f"label '{col.name}' must be a 0/1 column (or a category with two values)")


def utility(train: pd.DataFrame, holdout: pd.DataFrame, synth: pd.DataFrame, cols: Sequence[Column], label: str,
            seed: int, max_rows: int, exclude: Sequence[str] = ()) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cmap = {c.name: c for c in cols}
    if label not in cmap:
        return {"label": label, "skipped": f"label '{label}' is not a column of both the real and the synthetic data"}
    lab = cmap[label]
    if not (lab.type is ColumnType.binary or (lab.type is ColumnType.categorical and len(lab.categories or []) == 2)):
        return {"label": label, "skipped": f"label '{label}' is not a 0/1 column (or a category with two values)"}
    feats = [c for c in cols if c.name != label and c.name not in set(exclude)]
    enc = _Encoder(feats, [train, holdout, synth])
    rng = np.random.default_rng(seed)

    def xy(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        frame = _sample(frame, max_rows, rng)
        y, _ = _label_vector(frame[label], lab)
        keep = y.notna().to_numpy()
        x, _ = enc.encode(frame.loc[keep].reset_index(drop=True))
        return x, y[keep].to_numpy().astype(int)

    _, meaning = _label_vector(holdout[label].iloc[:0], lab)
    x_tr, y_tr = xy(train)
    x_ho, y_ho = xy(holdout)
    x_sy, y_sy = xy(synth)
    out: dict[str, Any] = {"label": label, "positive": meaning, "models": {},
                           "excluded_features": [c for c in exclude if c in cmap]}
    if len(set(y_ho)) < 2:
        out["skipped"] = "the held-out real records have a single label value; AUROC is undefined"
        return out
    models = {
        "logistic_regression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "gradient_boosting": lambda: HistGradientBoostingClassifier(max_iter=80, learning_rate=0.1, max_leaf_nodes=15, random_state=seed),
    }
    for name, make in models.items():
        res: dict[str, Any] = {}
        for tag, (x, y) in {"trtr": (x_tr, y_tr), "tstr": (x_sy, y_sy)}.items():
            if len(set(y)) < 2:
                res[tag] = None
                res[f"{tag}_note"] = "training labels have a single value"
                continue
            model = make().fit(x, y)
            res[tag] = _f(roc_auc_score(y_ho, model.predict_proba(x_ho)[:, 1]))
        if res.get("tstr") is not None and res.get("trtr"):
            res["ratio"] = _f(res["tstr"] / res["trtr"])
            res["gap"] = _f(res["trtr"] - res["tstr"])
        out["models"][name] = res
    return out


# ---- privacy -----------------------------------------------------------------------------------
def _row_keys(frame: pd.DataFrame, cols: Sequence[Column]) -> np.ndarray:
    """A hash per row over the compared columns (numbers rounded to 6 decimals, missing as a token)."""
    norm = pd.DataFrame(index=range(len(frame)))
    for c in cols:
        s = frame[c.name].reset_index(drop=True)
        if c.is_numeric or c.type is ColumnType.binary:
            norm[c.name] = ["NA" if pd.isna(v) else repr(float(v)) for v in _numeric(s).round(6)]
        else:
            norm[c.name] = ["NA" if v is None else "s:" + v for v in _cat(s)]
    if len(norm) == 0:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_pandas_object(norm, index=False).to_numpy()


def _nn_dist(ref: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Distance from each query row to its nearest ref row (Gower-style: mean absolute difference)."""
    from sklearn.neighbors import NearestNeighbors

    if len(ref) == 0 or len(query) == 0:
        return np.full(len(query), np.nan)
    nn = NearestNeighbors(n_neighbors=1, metric="manhattan").fit(ref)
    d, _ = nn.kneighbors(query)
    return d[:, 0]


def privacy_metrics(train: pd.DataFrame, holdout: pd.DataFrame, synth: pd.DataFrame, cols: Sequence[Column],
                    enc: _Encoder, privacy: Mapping[str, Any], seed: int, max_rows: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed + 1)
    accounting = {k: v for k, v in (privacy or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}
    m = min(len(train), len(holdout), max_rows)
    tr = _sample(train, m, rng)
    ho = _sample(holdout, m, rng)
    # exact copies against ALL training records; the chance baseline compares equal-size samples of
    # training and held-out records (with few, coarse columns identical records also occur by chance)
    k_syn = _row_keys(synth, cols)
    copies = {
        "rate_train": _f(np.isin(k_syn, _row_keys(train, cols)).mean()) if len(k_syn) else None,
        "rate_holdout": _f(np.isin(k_syn, _row_keys(holdout, cols)).mean()) if len(k_syn) else None,
        "rate_train_equal_size": _f(np.isin(k_syn, _row_keys(tr, cols)).mean()) if len(k_syn) else None,
        "rate_holdout_equal_size": _f(np.isin(k_syn, _row_keys(ho, cols)).mean()) if len(k_syn) else None,
        "synthetic_rows_checked": int(len(k_syn)),
    }
    # distances on the equal-size samples, Gower-style (one-hot halved; mean over columns)
    sy = _sample(synth, max_rows, rng)
    ncol = max(len(cols), 1)
    x_tr = enc.encode(tr, onehot_weight=0.5)[0] / ncol
    x_ho = enc.encode(ho, onehot_weight=0.5)[0] / ncol
    x_sy = enc.encode(sy, onehot_weight=0.5)[0] / ncol
    d_tr, d_ho = _nn_dist(x_tr, x_sy), _nn_dist(x_ho, x_sy)
    dcr: dict[str, Any] = {"metric": "Gower distance (public bounds), equal-size train and holdout samples", "records_per_split": m}
    if len(d_tr) and m:
        closer = float(np.mean(d_tr < d_ho) + 0.5 * np.mean(d_tr == d_ho))
        dcr.update(
            synthetic_to_train_median=_f(np.median(d_tr), 5), synthetic_to_holdout_median=_f(np.median(d_ho), 5),
            synthetic_to_train_p5=_f(np.quantile(d_tr, 0.05), 5), synthetic_to_holdout_p5=_f(np.quantile(d_ho, 0.05), 5),
            share_closer_to_train=_f(closer),
        )
    # membership inference: members (train) vs non-members (holdout), scored by closeness to synthetic
    mia: dict[str, Any] = {"attack": "distance to the closest synthetic record (closer = member)", "records_per_group": m}
    if m >= 2 and len(x_sy):
        s_tr, s_ho = _nn_dist(x_sy, x_tr), _nn_dist(x_sy, x_ho)
        y = np.r_[np.ones(len(s_tr)), np.zeros(len(s_ho))]
        mia["auc"] = _f(roc_auc_score(y, -np.r_[s_tr, s_ho]))
    else:
        mia["auc"] = None
    out = {"accounting": accounting, "exact_copies": copies, "dcr": dcr, "membership_inference": mia}
    return out, {"train": d_tr, "holdout": d_ho}


# ---- clinical validity -------------------------------------------------------------------------
def _rules(frame: pd.DataFrame) -> dict[str, tuple[str, pd.Series, pd.Series]]:
    """name -> (description, evaluable mask, violation mask), for the rules whose columns exist."""
    have = set(frame.columns)
    g = lambda c: _numeric(frame[c])  # noqa: E731
    rules: dict[str, tuple[str, pd.Series, pd.Series]] = {}
    if {"sbp_mmhg", "dbp_mmhg"} <= have:
        a, b = g("sbp_mmhg"), g("dbp_mmhg")
        rules["sbp_ge_dbp"] = ("systolic >= diastolic blood pressure", a.notna() & b.notna(), a < b)
    if {"diabetes_duration_years", "age_years"} <= have:
        a, b = g("diabetes_duration_years"), g("age_years")
        rules["duration_le_age"] = ("diabetes duration <= age", a.notna() & b.notna(), a > b)
    if {"diabetes_age_at_diagnosis", "age_years"} <= have:
        a, b = g("diabetes_age_at_diagnosis"), g("age_years")
        rules["age_at_diagnosis_le_age"] = ("age at diabetes diagnosis <= age", a.notna() & b.notna(), a > b)
    if {"diabetes_age_at_diagnosis", "diabetes_duration_years", "age_years"} <= have:
        a, d, b = g("diabetes_age_at_diagnosis"), g("diabetes_duration_years"), g("age_years")
        rules["diagnosis_plus_duration_is_age"] = (
            "age at diagnosis + duration = age (within 1 year)", a.notna() & d.notna() & b.notna(), (a + d - b).abs() > 1.0)
    if {"bmi_kg_m2", "weight_kg", "height_cm"} <= have:
        bmi, w, h = g("bmi_kg_m2"), g("weight_kg"), g("height_cm")
        calc = w / (h / 100.0) ** 2
        rules["bmi_matches_weight_height"] = (
            f"BMI = weight / height^2 (within {BMI_TOLERANCE:.0%})", bmi.notna() & w.notna() & h.notna(),
            (bmi - calc).abs() > BMI_TOLERANCE * calc)
    if {"total_chol_mg_dl", "hdl_mg_dl"} <= have:
        t, hdl = g("total_chol_mg_dl"), g("hdl_mg_dl")
        rules["hdl_below_total_cholesterol"] = ("HDL < total cholesterol", t.notna() & hdl.notna(), hdl >= t)
    if {"total_chol_mg_dl", "hdl_mg_dl", "non_hdl_chol_mg_dl"} <= have:
        t, hdl, nh = g("total_chol_mg_dl"), g("hdl_mg_dl"), g("non_hdl_chol_mg_dl")
        rules["non_hdl_is_total_minus_hdl"] = ("non-HDL = total - HDL (within 2 mg/dL)", t.notna() & hdl.notna() & nh.notna(),
                                               (nh - (t - hdl)).abs() > 2.0)
    if {"insulin_now", "diabetes_diagnosed"} <= have:
        ins, dx = g("insulin_now"), g("diabetes_diagnosed")
        rules["insulin_implies_diagnosis"] = ("taking insulin implies diagnosed diabetes", (ins == 1) & dx.notna(), dx != 1)
    if {"diabetes_pills", "diabetes_diagnosed"} <= have:
        pills, dx = g("diabetes_pills"), g("diabetes_diagnosed")
        told = g("prediabetes_told").fillna(0) if "prediabetes_told" in have else pd.Series(0.0, index=frame.index)
        rules["pills_imply_diagnosis"] = ("glucose-lowering pills imply diagnosed diabetes or prediabetes",
                                          (pills == 1) & dx.notna(), (dx != 1) & (told != 1))
    if {"diabetes", "diabetes_diagnosed", "hba1c_pct"} <= have:
        flag, dx, a1c = g("diabetes"), g("diabetes_diagnosed"), g("hba1c_pct")
        expected = ((dx == 1) | (a1c >= 6.5)).astype(float)
        known = flag.notna() & dx.notna() & (a1c.notna() | (dx == 1))
        rules["diabetes_flag_matches_definition"] = ("diabetes flag = diagnosis or HbA1c >= 6.5 %", known, flag != expected)
    return rules


def cohort_mask(frame: pd.DataFrame, cohort: Any, schema: SourceSchema) -> tuple[np.ndarray, list[str]]:
    """Rows meeting a cohort definition: a profile Cohort (all_of/any_of) or a card's {fixed, filters}.

    Rules on columns the frame lacks are skipped (and named). A missing value never meets a rule.
    """
    skipped: list[str] = []
    mask = np.ones(len(frame), dtype=bool)
    if hasattr(cohort, "model_dump"):
        cohort = cohort.model_dump()
    cohort = dict(cohort or {})
    if "all_of" in cohort or "any_of" in cohort:
        from synthehr.tools.store.profiles import CohortRule

        def rule_mask(r: Any) -> np.ndarray | None:
            rule = r if isinstance(r, CohortRule) else CohortRule.model_validate(r)
            if rule.column not in frame.columns:
                skipped.append(rule.column)
                return None
            vals = frame[rule.column].astype(object).where(frame[rule.column].notna(), None)
            return np.array([rule.matches(v) for v in vals], dtype=bool)

        for r in cohort.get("all_of") or []:
            m = rule_mask(r)
            if m is not None:
                mask &= m
        anys = [m for m in (rule_mask(r) for r in cohort.get("any_of") or []) if m is not None]
        if anys:
            mask &= np.logical_or.reduce(anys)
        return mask, skipped
    from synthehr.tools.engines.dpgan.cohort import parse_filters

    items: list[Any] = [{"column": k, "op": "==", "value": v} for k, v in (cohort.get("fixed") or {}).items()]
    items += list(cohort.get("filters") or [])
    for flt in parse_filters(items, schema):
        if flt.column not in frame.columns:
            skipped.append(flt.column)
            continue
        mask &= flt.mask(frame)
    return mask, skipped


def clinical_validity(holdout: pd.DataFrame, synth: pd.DataFrame, cols: Sequence[Column], schema: SourceSchema,
                      profile: Any, cohort: Any, min_cell: int = MIN_CELL) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    tot_in = tot = 0
    for c in cols:
        if not c.is_numeric:
            continue
        lo, hi = _bounds(c, profile)
        if lo is None or hi is None:
            continue
        v = _numeric(synth[c.name]).dropna()
        inside = int(((v >= lo) & (v <= hi)).sum())
        bounds[c.name] = {"lower": lo, "upper": hi, "n": int(len(v)), "inside": inside,
                          "share_inside": _f(inside / len(v)) if len(v) else None}
        tot_in += inside
        tot += len(v)
    out: dict[str, Any] = {"bounds": {"columns": bounds, "share_inside": _f(tot_in / tot) if tot else None}}
    rules_s, rules_r = _rules(synth), _rules(holdout)
    checks: dict[str, Any] = {}
    for name, (desc, ok, bad) in rules_s.items():
        n, k = int(ok.sum()), int((bad & ok).sum())
        entry: dict[str, Any] = {"rule": desc, "synthetic_n": n, "synthetic_violations": k,
                                 "synthetic_violation_share": _f(k / n) if n else None}
        if name in rules_r:
            _, rok, rbad = rules_r[name]
            rn, rk = int(rok.sum()), int((rbad & rok).sum())
            shown = suppress(rk, min_cell)
            entry.update(real_n=suppress(rn, min_cell), real_violations=shown,
                         real_violation_share=_f(rk / rn) if rn and not isinstance(shown, str) else None)
        checks[name] = entry
    out["rules"] = checks
    if cohort:
        ms, skipped = cohort_mask(synth, cohort, schema)
        mr, _ = cohort_mask(holdout, cohort, schema)
        hits = int(mr.sum())
        shown = suppress(hits, min_cell)
        out["cohort"] = {
            "synthetic_hit_rate": _f(ms.mean()) if len(ms) else None,
            "real_holdout_hit_rate": _f(mr.mean()) if len(mr) and not isinstance(shown, str) else None,
            "real_holdout_hits": shown,
            "rules_skipped_columns": sorted(set(skipped)),
        }
    return out


# ---- flags -------------------------------------------------------------------------------------
def _flags(report: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    pv = report["privacy"]
    cp = pv["exact_copies"]
    if (cp["rate_train"] is not None and cp["rate_train"] >= COPY_RATE_FLAG
            and (cp["rate_train_equal_size"] or 0) > 2 * (cp["rate_holdout_equal_size"] or 0) + 0.005):
        flags.append(f"exact copies of training records: {100 * cp['rate_train']:.1f}% of synthetic records "
                     f"(held-out records: {100 * (cp['rate_holdout'] or 0):.1f}%)")
    auc = pv["membership_inference"].get("auc")
    if auc is not None and auc > MIA_AUC_FLAG:
        flags.append(f"membership-inference AUC {auc:.2f} > {MIA_AUC_FLAG}")
    d = pv["dcr"]
    p5_tr, p5_ho = d.get("synthetic_to_train_p5"), d.get("synthetic_to_holdout_p5")
    if p5_tr is not None and p5_ho is not None and p5_tr < DCR_P5_RATIO_FLAG * p5_ho:
        # the memorisation signature: the closest synthetic records hug training records, not held-out ones
        flags.append(f"synthetic records lie much closer to training than to held-out records (5th-percentile distance "
                     f"{p5_tr:.4f} vs {p5_ho:.4f}; {100 * (d.get('share_closer_to_train') or 0):.0f}% closer to training)")
    acc = pv["accounting"]
    if acc.get("epsilon") is None:
        flags.append("no privacy accounting given (epsilon unknown)")
    elif acc.get("target_epsilon") is not None and float(acc["epsilon"]) > float(acc["target_epsilon"]) + 1e-9:
        flags.append(f"epsilon spent {float(acc['epsilon']):.3g} exceeds the target {float(acc['target_epsilon']):.3g}")
    fid = report["fidelity"]
    if fid.get("detection_auc") is not None and fid["detection_auc"] > DETECTION_AUC_FLAG:
        flags.append(f"real-vs-synthetic detection AUC {fid['detection_auc']:.2f} > {DETECTION_AUC_FLAG}: synthetic records are easy to tell from real ones")
    poor = [(name, v["score"]) for name, v in fid["columns"].items() if v["score"] is not None and v["score"] < COLUMN_FIDELITY_FLAG]
    if poor:
        flags.append(f"{len(poor)} column(s) distributed unlike the real ones (KS/TVD complement < {COLUMN_FIDELITY_FLAG}): "
                     + ", ".join(f"{n} {v:.2f}" for n, v in sorted(poor, key=lambda p: p[1])))
    for name, v in (report.get("utility") or {}).get("models", {}).items():
        if v.get("gap") is not None and v["gap"] > UTILITY_GAP_FLAG:
            flags.append(f"utility ({name.replace('_', ' ')}): TSTR AUROC {v['tstr']:.2f} vs TRTR {v['trtr']:.2f}")
    cv = report["clinical_validity"]
    sb = cv["bounds"].get("share_inside")
    if sb is not None and sb < IN_BOUNDS_FLAG:
        flags.append(f"only {100 * sb:.1f}% of synthetic values lie inside the public bounds")
    for v in cv["rules"].values():
        s = v.get("synthetic_violation_share")
        if s is not None and s > RULE_VIOLATION_FLAG:
            flags.append(f"rule '{v['rule']}' fails in {100 * s:.1f}% of synthetic records")
    return flags


# ---- the report --------------------------------------------------------------------------------
def build_quality_report(
    real_train: pd.DataFrame,
    real_holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    schema: SourceSchema,
    label: str | None,
    privacy: dict,
    out_dir: Path,
    profile: Any = None,
    cohort: dict | None = None,
    *,
    seed: int = 0,
    max_rows: int = 5000,
    min_cell: int = MIN_CELL,
    plots: bool = True,
    threads: int | None = 1,
) -> dict:
    """Compare a synthetic sample with real train/holdout splits; write quality.json, quality.md and PNGs.

    real_train: the records the generator was trained on (privacy attacks only); real_holdout: real
    records training never saw (the comparison for fidelity and utility); synthetic: a sample of the
    generator; label: a 0/1 column for TSTR/TRTR (None skips utility); privacy: the accounting
    (epsilon, delta, accountant, target_epsilon, ...); profile: a ConditionProfile (bounds);
    cohort: a profile Cohort (all_of/any_of) or a card's {fixed, filters} for the hit rate.
    Returns the report dict (also written as quality.json), with `flags` and `files`.
    Keyword-only: seed, max_rows (cap per frame for models and distances), min_cell (suppression),
    plots (write PNGs), threads (BLAS/OpenMP threads; None = library default).
    """
    import sklearn.ensemble  # noqa: F401  (load the OpenMP/BLAS runtimes first: threadpoolctl limits loaded ones only)
    import sklearn.neighbors  # noqa: F401
    from threadpoolctl import threadpool_limits

    # Small models on small data: one thread each is fast, and it avoids OpenMP oversubscription
    # (gradient boosting slows down many times on a busy machine otherwise).
    with threadpool_limits(limits=threads):
        return _build(real_train, real_holdout, synthetic, schema, label, privacy, Path(out_dir), profile, cohort,
                      seed=seed, max_rows=max_rows, min_cell=min_cell, plots=plots)


def _build(real_train: pd.DataFrame, real_holdout: pd.DataFrame, synthetic: pd.DataFrame, schema: SourceSchema,
           label: str | None, privacy: dict, out_dir: Path, profile: Any, cohort: Any, *, seed: int, max_rows: int,
           min_cell: int, plots: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = _common_columns(schema, real_train, real_holdout, synthetic)
    if not cols:
        raise ToolInputError(f"the synthetic sample shares no column with {schema.name}; nothing to compare")
    if len(real_holdout) == 0 or len(synthetic) == 0 or len(real_train) == 0:
        raise ToolInputError("the quality report needs non-empty training, held-out and synthetic records")
    rng = np.random.default_rng(seed)
    train = real_train.reset_index(drop=True)
    holdout = _sample(real_holdout, max_rows, rng)
    synth = synthetic.reset_index(drop=True)
    synth_s = _sample(synth, max_rows, rng)
    enc = _Encoder(cols, [train, holdout, synth])

    fid, corr = fidelity(holdout, synth_s, cols, enc, seed, min_cell)
    util = (utility(train, holdout, synth_s, cols, label, seed, max_rows, exclude=schema.label_leakage.get(label, ()))
            if label else None)
    priv, dists = privacy_metrics(train, holdout, synth, cols, enc, privacy, seed, max_rows)
    clin = clinical_validity(holdout, synth, cols, schema, profile, cohort, min_cell)
    structure = structure_fidelity(holdout, synth_s, cols, label, schema)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "kind": "custodian report",
        "audience": AUDIENCE,
        "warning": CUSTODIAN_WARNING,
        "created_at": now_iso(),
        "source": schema.name,
        "condition": getattr(profile, "id", None),
        "sizes": {"train": suppress(len(train), min_cell), "holdout": suppress(len(real_holdout), min_cell),
                  "synthetic": int(len(synth))},
        "columns_compared": [c.name for c in cols],
        "columns_not_in_synthetic": [c.name for c in schema.columns if c.name not in synthetic.columns],
        "fidelity": fid,
        "structure": structure,
        "utility": util,
        "privacy": priv,
        "clinical_validity": clin,
        "notes": [
            f"Aggregates only; counts of real records from 1 to {min_cell - 1} are shown as '<{min_cell}'.",
            "Fidelity and utility compare with real records held out from training; privacy attacks use equal-size "
            "samples of training and held-out records.",
        ],
    }
    report["flags"] = _flags(report)
    report["summary"] = summary(report)
    files: list[str] = []
    if plots:
        files = _write_plots(holdout, synth_s, cols, corr, dists, out_dir, min_cell)
    report["files"] = [Path(f).name for f in files] + ["quality.json", "quality.md"]
    atomic_write_text(out_dir / "quality.md", render_markdown(report))
    atomic_write_text(out_dir / "quality.json", json.dumps(report, indent=2, default=str))
    return report


def structure_fidelity(holdout: pd.DataFrame, synth: pd.DataFrame, cols: Sequence[Column], label: str | None,
                       schema: SourceSchema) -> dict[str, Any]:
    """Fidelity that cannot hide a broken pair (see engines/fidelity.py): all-pairs 2-way TVD, the 10
    strongest real correlations, the label's top-5 predictor signs, and the cohort label == 1 (or its
    last category) of the held-out data vs the synthetic records with that label."""
    from synthehr.tools.engines import fidelity as fm

    spec = [{"name": c.name, "type": c.type.value, "lower": c.lower, "upper": c.upper, "categories": c.categories}
            for c in cols]
    out: dict[str, Any] = {"all_pairs_tvd": fm.all_pairs_tvd(holdout, synth, spec),
                           "top_correlation": fm.top_correlation_error(holdout, synth, spec)}
    if label and label in holdout and label in synth:
        out["predictor_signs"] = fm.predictor_signs(holdout, synth, spec, label,
                                                    exclude=schema.label_leakage.get(label, ()))
        col = schema.column(label)
        pos = "1" if col.type.value == "binary" else str((col.categories or [""])[-1])
        rl, sl = fm._labels(holdout[label]), fm._labels(synth[label])
        if (rl == pos).sum() > 0 and (sl == pos).sum() > 0:
            out["cohort"] = {"cohort": f"{label} = {pos}",
                             **fm.cohort_fidelity(holdout[rl == pos], synth[sl == pos], spec)}
    return out


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (for CLI tables, cards and the agent)."""
    fid, pv, cv = report["fidelity"], report["privacy"], report["clinical_validity"]
    util = report.get("utility") or {}
    gb = util.get("models", {}).get("gradient_boosting", {})
    lr = util.get("models", {}).get("logistic_regression", {})
    return {
        "epsilon": pv["accounting"].get("epsilon"),
        "delta": pv["accounting"].get("delta"),
        "accountant": pv["accounting"].get("accountant"),
        "marginal_score": fid.get("marginal_score"),
        "correlation_mean_abs_diff": fid["correlation"].get("mean_abs_diff"),
        "detection_auc": fid.get("detection_auc"),
        "tstr_auroc_gb": gb.get("tstr"),
        "trtr_auroc_gb": gb.get("trtr"),
        "tstr_auroc_lr": lr.get("tstr"),
        "trtr_auroc_lr": lr.get("trtr"),
        "exact_copy_rate": pv["exact_copies"].get("rate_train"),
        "dcr_share_closer_to_train": pv["dcr"].get("share_closer_to_train"),
        "mia_auc": pv["membership_inference"].get("auc"),
        "share_in_bounds": cv["bounds"].get("share_inside"),
        "cohort_hit_rate": (cv.get("cohort") or {}).get("synthetic_hit_rate"),
        "pairs_tvd_mean": ((report.get("structure") or {}).get("all_pairs_tvd") or {}).get("mean"),
        "pairs_tvd_worst": (((report.get("structure") or {}).get("all_pairs_tvd") or {}).get("worst") or [{}])[0].get("tvd"),
        "top10_corr_error": ((report.get("structure") or {}).get("top_correlation") or {}).get("mean_abs_error"),
        "predictor_sign_agreement": ((report.get("structure") or {}).get("predictor_signs") or {}).get("agreement"),
        "flags": len(report.get("flags", [])),
    }


def headline(report: dict[str, Any]) -> str:
    """One short paragraph for the agent / CLI."""
    s = report.get("summary") or summary(report)

    def g(v: Any, fmt: str = ".2f") -> str:
        return "n/a" if v is None else format(v, fmt)

    parts = [
        f"epsilon {g(s['epsilon'], '.3g')} ({s['accountant'] or 'n/a'})",
        f"fidelity {g(s['marginal_score'])}",
        f"corr. diff {g(s['correlation_mean_abs_diff'], '.3f')}",
        f"detection AUC {g(s['detection_auc'])}",
    ]
    if s.get("tstr_auroc_gb") is not None or s.get("trtr_auroc_gb") is not None:
        parts.append(f"TSTR/TRTR AUROC {g(s['tstr_auroc_gb'])}/{g(s['trtr_auroc_gb'])}")
    parts += [
        f"exact copies {g(100 * s['exact_copy_rate'] if s['exact_copy_rate'] is not None else None, '.1f')}%",
        f"MIA AUC {g(s['mia_auc'])}",
        f"in bounds {g(100 * s['share_in_bounds'] if s['share_in_bounds'] is not None else None, '.1f')}%",
    ]
    flags = report.get("flags") or []
    return "Quality: " + ", ".join(parts) + (f". Flags: {'; '.join(flags)}." if flags else ". No flags.")


def _write_plots(holdout: pd.DataFrame, synth: pd.DataFrame, cols: Sequence[Column], corr: dict[str, pd.DataFrame],
                 dists: dict[str, np.ndarray], out_dir: Path, min_cell: int) -> list[str]:
    from types import SimpleNamespace

    from synthehr.tools.engines import plots

    infos = {c.name: SimpleNamespace(name=c.name, title=c.label or c.name, unit=c.unit, kind=c.type.value,
                                     categories=c.categories, lower=c.lower, upper=c.upper, numeric=c.is_numeric)
             for c in cols}
    names = [c.name for c in cols]
    pages = [names[i : i + MARGINALS_PER_PAGE] for i in range(0, len(names), MARGINALS_PER_PAGE)]
    files = []
    for i, page in enumerate(pages, start=1):
        suffix = "" if i == 1 else f"_{i}"
        files.append(plots.marginals(holdout, synth, infos, page, out_dir / f"quality_marginals{suffix}.png", min_cell=min_cell,
                                     title=f"Real held-out (n={suppress(len(holdout), min_cell)}) vs synthetic (n={len(synth)}) "
                                           f"distributions" + (f", page {i} of {len(pages)}" if len(pages) > 1 else "")))
    r, s = corr["real"], corr["synthetic"]
    plain = {c.name for c in cols if c.type is not ColumnType.categorical}  # one-hot pairs stay in the JSON
    keep = [k for k in r.columns if k in plain and not (r[k].isna().all() or s[k].isna().all())][:30]
    if len(keep) >= 2:
        diff = (r.loc[keep, keep] - s.loc[keep, keep]).abs()
        labels = [f"{infos[k].title} ({k})" if infos[k].title != k else k for k in keep]
        files.append(plots.heatmap(diff, labels, out_dir / "quality_correlation_diff.png",
                                   "Absolute difference of Pearson correlations, real held-out vs synthetic",
                                   vmin=0, vmax=1, cmap="Reds", note="0 = same correlation; numeric and yes/no observations"))
    if len(dists["train"]):
        files.append(plots.dcr(dists["train"], dists["holdout"], out_dir / "quality_dcr.png"))
    return files


def render_markdown(report: dict[str, Any]) -> str:
    """quality.md: the same aggregates as quality.json, for people."""
    s = report["summary"]

    def g(v: Any, fmt: str = ".3f") -> str:
        return "n/a" if v is None else (format(v, fmt) if isinstance(v, (int, float)) else str(v))

    L = [f"# Custodian report: synthetic vs real ({report['source']})", "",
         f"**{report.get('warning', CUSTODIAN_WARNING)}.** The figures below are computed on real records without "
         "differential privacy and are not charged to the privacy ledger; do not copy them into a shared data set.", ""]
    L.append(f"Created {report['created_at']}. Records: training {report['sizes']['train']}, held out "
             f"{report['sizes']['holdout']}, synthetic {report['sizes']['synthetic']}. "
             f"Columns compared: {len(report['columns_compared'])}.")
    L += ["", "## Flags", ""]
    L += [f"- {f}" for f in report["flags"]] or ["- none"]
    L += ["", "## Headline", "", "| metric | value | ideal |", "|---|---|---|"]
    rows = [
        ("epsilon (delta)", f"{g(s['epsilon'], '.3g')} ({g(s['delta'], '.2g')}), {s['accountant'] or 'n/a'}", "as small as useful"),
        ("marginal fidelity (mean KS/TVD complement)", g(s["marginal_score"]), "1"),
        ("correlation difference (mean abs)", g(s["correlation_mean_abs_diff"]), "0"),
        ("real-vs-synthetic detection AUC", g(s["detection_auc"]), "0.5"),
        ("TSTR / TRTR AUROC, gradient boosting", f"{g(s['tstr_auroc_gb'])} / {g(s['trtr_auroc_gb'])}", "equal"),
        ("TSTR / TRTR AUROC, logistic regression", f"{g(s['tstr_auroc_lr'])} / {g(s['trtr_auroc_lr'])}", "equal"),
        ("exact copies of training records", g(s["exact_copy_rate"]), "0"),
        ("share of synthetic closer to train than holdout", g(s["dcr_share_closer_to_train"]), "0.5"),
        ("membership-inference AUC", g(s["mia_auc"]), "0.5"),
        ("synthetic values inside public bounds", g(s["share_in_bounds"]), "1"),
        ("cohort-definition hit rate", g(s["cohort_hit_rate"]), "1 for a cohort sample"),
        ("all-pairs 2-way TVD, mean / worst pair", f"{g(s.get('pairs_tvd_mean'))} / {g(s.get('pairs_tvd_worst'))}", "0"),
        ("correlation error, 10 strongest real pairs (mean abs)", g(s.get("top10_corr_error")), "0"),
        ("sign agreement, top-5 predictors of the label", g(s.get("predictor_sign_agreement")), "1"),
    ]
    L += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    st = report.get("structure") or {}
    if st.get("all_pairs_tvd", {}).get("worst"):
        L += ["", "Worst 2-way pairs (TVD): " + "; ".join(f"{d['a']} x {d['b']}: {g(d['tvd'], '.2f')}"
                                                       for d in st["all_pairs_tvd"]["worst"])]
    if st.get("top_correlation", {}).get("pairs"):
        L += ["", "Strongest real correlations (real / synthetic): " + "; ".join(
            f"{d['a']} ~ {d['b']}: {g(d['real'], '.2f')} / {g(d['synthetic'], '.2f')}" for d in st["top_correlation"]["pairs"])]
    if (st.get("predictor_signs") or {}).get("reversed"):
        L += ["", "Top predictors with a reversed sign: " + ", ".join(st["predictor_signs"]["reversed"])]
    if ((st.get("predictor_signs") or {}).get("marginal") or {}).get("reversed"):
        L += ["", "Top associations with the label reversed in the synthetic data: "
              + ", ".join(st["predictor_signs"]["marginal"]["reversed"])]
    if (st.get("predictor_signs") or {}).get("undetermined"):
        L += ["", "Top predictors whose sign the held-out real data do not determine (Wald |z| < 1.96; not "
              "counted): " + ", ".join(st["predictor_signs"]["undetermined"])]
    if st.get("cohort"):
        c = st["cohort"]
        L += ["", f"Cohort fidelity ({c.get('cohort')}): age-band TVD {g(c.get('age_band_tvd'))}, sex TVD "
              f"{g(c.get('sex_tvd'))}, race TVD {g(c.get('race_ethnicity_tvd'))}, largest mean difference "
              f"{g(c.get('max_abs_mean_diff_sd'))} SD"]
    fid = report["fidelity"]
    L += ["", "## Fidelity (real held-out vs synthetic)", "", "| column | metric | score | real mean | synthetic mean | real missing | synthetic missing |",
          "|---|---|---|---|---|---|---|"]
    for name, v in fid["columns"].items():
        m = fid["missingness"]["columns"][name]
        L.append(f"| {name} | {v['metric']} | {g(v['score'])} | {g(v.get('real_mean'), '.2f')} | {g(v.get('synthetic_mean'), '.2f')} "
                 f"| {m['real_missing']} | {m['synthetic_missing']} |")
    if fid["correlation"]["largest_differences"]:
        L += ["", "Largest correlation differences: " + "; ".join(
            f"{d['a']} ~ {d['b']}: {g(d['abs_diff'], '.2f')}" for d in fid["correlation"]["largest_differences"])]
    util = report.get("utility")
    L += ["", "## Utility (train on synthetic, test on real held-out)", ""]
    if not util:
        L.append("No label given: skipped.")
    elif util.get("skipped"):
        L.append(f"Label {util['label']}: skipped ({util['skipped']}).")
    else:
        left_out = util.get("excluded_features") or []
        L += [f"Label: {util['positive']}." + (f" Left out of the features because they define or follow from the "
                                               f"label: {', '.join(left_out)}." if left_out else ""),
              "", "| model | TSTR AUROC | TRTR AUROC | ratio |", "|---|---|---|---|"]
        for name, v in util["models"].items():
            L.append(f"| {name.replace('_', ' ')} | {g(v.get('tstr'))} | {g(v.get('trtr'))} | {g(v.get('ratio'))} |")
    pv = report["privacy"]
    L += ["", "## Privacy", "", "Accounting: " + ", ".join(f"{k} = {v}" for k, v in pv["accounting"].items()), ""]
    d = pv["dcr"]
    L += [f"- Distance to closest record (Gower, {d.get('records_per_split')} records per split): median "
          f"{g(d.get('synthetic_to_train_median'), '.4f')} to training vs {g(d.get('synthetic_to_holdout_median'), '.4f')} to held-out; "
          f"5th percentile {g(d.get('synthetic_to_train_p5'), '.4f')} vs {g(d.get('synthetic_to_holdout_p5'), '.4f')}; "
          f"share closer to training {g(d.get('share_closer_to_train'))}.",
          f"- Exact copies: {g(pv['exact_copies']['rate_train'])} of synthetic records equal a training record "
          f"({g(pv['exact_copies']['rate_holdout'])} equal a held-out record).",
          f"- Membership inference, attack by {pv['membership_inference']['attack']}: AUC {g(pv['membership_inference'].get('auc'))} "
          f"({pv['membership_inference'].get('records_per_group')} training and held-out records)."]
    cv = report["clinical_validity"]
    L += ["", "## Clinical validity (synthetic records)", "",
          f"Values inside public bounds: {g(cv['bounds']['share_inside'])}.", ""]
    if cv["rules"]:
        L += ["| rule | synthetic violations | share | real held-out share |", "|---|---|---|---|"]
        for v in cv["rules"].values():
            L.append(f"| {v['rule']} | {v['synthetic_violations']} of {v['synthetic_n']} | {g(v['synthetic_violation_share'])} "
                     f"| {g(v.get('real_violation_share'))} |")
    if cv.get("cohort"):
        c = cv["cohort"]
        L += ["", f"Cohort definition met by {g(c['synthetic_hit_rate'])} of synthetic records "
                  f"(real held-out: {g(c['real_holdout_hit_rate'])})"
              + (f"; rules on absent columns skipped: {', '.join(c['rules_skipped_columns'])}" if c["rules_skipped_columns"] else "") + "."]
    L += ["", "## Plots", ""] + [f"![{f}]({f})" for f in report.get("files", []) if f.endswith(".png")]
    L += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(L) + "\n"


# ---- the report of a model (synthehr report) ---------------------------------------------------
# A model's manifest records how its real records were split (manifest["extra"]: holdout_fraction,
# holdout_seed, source_content_hash; train_generator writes them), so that a report can be rebuilt
# later against exactly the records training never saw. The split is `split_holdout`.


def _model_dir(deps: Any, row: dict[str, Any]) -> Path:
    p = Path(row.get("path") or "")
    if str(p) and p.is_file():
        p = p.parent
    if not str(p) or not p.is_dir():
        p = deps.workspace.models_dir / row["id"]
    return p


def resolve_model(deps: Any, ref: str | None) -> tuple[dict[str, Any], str | None]:
    """(models-table row, data set id or None) for a model id, a data set id or "last"."""
    key = (ref or "last").strip()
    ws = deps.workspace
    model = ws.get("models", "id", key)
    if model is not None:
        return model, None
    ds = ws.get("datasets", "id", key)
    if ds is None and key.lower() in {"last", "latest", "this", "current", "previous"}:
        from synthehr.tools.store.datasets import resolve_dataset

        last_model = getattr(deps.session, "last_model", None)
        if last_model and ws.get("models", "id", last_model) is not None and not deps.session.last_dataset:
            return ws.get("models", "id", last_model), None  # type: ignore[return-value]
        ds = resolve_dataset(deps, key)
    if ds is not None:
        if not ds.get("model_id"):
            raise ToolInputError(f"data set '{ds['id']}' records no model, so it has no quality report")
        model = ws.get("models", "id", ds["model_id"])
        if model is None:
            raise ToolInputError(f"the model '{ds['model_id']}' of data set '{ds['id']}' is no longer in the workspace")
        return model, ds["id"]
    if key in deps.catalog.names():
        raise ToolInputError(f"'{key}' is a real data source; quality reports belong to trained models and their data sets")
    models = [r["id"] for r in ws.query("SELECT id FROM models ORDER BY created_at DESC LIMIT 5")]
    sets = [r["id"] for r in ws.query("SELECT id FROM datasets ORDER BY created_at DESC LIMIT 5")]
    raise ToolInputError(
        f"unknown model or data set '{key}'; models: {', '.join(models) or 'none yet'}; "
        f"data sets: {', '.join(sets) or 'none yet'}; or 'last'"
    )


def _default_label(schema: SourceSchema, manifest: dict[str, Any]) -> str | None:
    extra = manifest.get("extra") or {}
    if extra.get("quality_label"):
        return str(extra["quality_label"])
    for c in [*(manifest.get("conditions") or []), *schema.condition_columns]:
        col = schema.column_map().get(c)
        if col is not None and col.type is ColumnType.binary:
            return col.name
    return None


def rebuild_report(deps: Any, model: dict[str, Any], seed: int | None = None) -> dict:
    """Build a model's missing report: its recorded holdout split of the source, and a fresh sample."""
    from synthehr.tools.engines.dpgan import TrainedGenerator

    mdir = _model_dir(deps, model)
    manifest = TrainedGenerator.read_manifest(mdir)
    extra = manifest.get("extra") or {}
    fraction, split_seed = extra.get("holdout_fraction"), extra.get("holdout_seed")
    if not fraction or split_seed is None:
        raise ToolInputError(
            f"model '{model['id']}' has no quality report and its manifest records no holdout split, so a report "
            "against records training never saw cannot be built; train a new model to get one"
        )
    stated = extra.get("source_content_hash")
    if stated and stated != deps.catalog.content_hash(model["source"]):
        raise ToolInputError(
            f"the records of '{model['source']}' changed since model '{model['id']}' was trained, so its holdout "
            "cannot be recovered; train a new model to get a quality report"
        )
    gen = TrainedGenerator.load(mdir)
    schema = gen.schema
    real = deps.catalog.load(model["source"])
    train, holdout = split_holdout(real, float(fraction), int(split_seed))
    # (the split is recovered exactly: same records (content hash above), same fraction and seed)
    seed = gen.seed if seed is None else seed
    synthetic = gen.sample(len(train), seed=seed)  # as train_generator's report does
    profile = None
    cond = (manifest.get("extra") or {}).get("condition")
    if cond:
        try:
            from synthehr.tools.store.profiles import load_profiles

            profile = load_profiles().get(cond if isinstance(cond, str) else cond.get("id"))
        except Exception:
            profile = None
    privacy = {k: v for k, v in manifest.get("privacy", {}).items() if not isinstance(v, (list, dict))}
    return build_quality_report(train, holdout, synthetic, schema, _default_label(schema, manifest), privacy, mdir,
                                profile=profile, cohort=profile.cohort if profile is not None else None, seed=seed)


def report_for(deps: Any, model_or_dataset_id: str, rebuild: bool = False) -> dict[str, Any]:
    """The quality report stored beside a model (models/<id>/quality.*), built first if missing.

    Accepts a model id, a data set id (the report of its model) or "last". Returns {model_id,
    dataset_id, dir, built, report, text, files}.
    """
    model, ds_id = resolve_model(deps, model_or_dataset_id)
    require_custodian(deps, model["source"], model["id"])
    mdir = _model_dir(deps, model)
    qfile = mdir / "quality.json"
    built = False
    if qfile.is_file() and not rebuild:
        report = json.loads(qfile.read_text(encoding="utf-8"))
    else:
        report = rebuild_report(deps, model)
        built = True
    files = [str(mdir / f) for f in report.get("files", []) if (mdir / f).is_file()]
    return {"model_id": model["id"], "dataset_id": ds_id, "dir": str(mdir), "built": built, "report": report,
            "text": headline(report), "files": files, "kind": "custodian report", "warning": CUSTODIAN_WARNING}


# ---- who may see it ----------------------------------------------------------------------------
def custodian_allowed(deps: Any, source: str) -> bool:
    """Whether the configured user is the custodian of `source` (may see its custodian reports).

    privacy.custodian_reports true/false decides for every source; null (the default) means true for
    built-in public sources (their records are public already) and false for registered user sources."""
    setting = deps.settings.privacy.custodian_reports
    if setting is not None:
        return bool(setting)
    try:
        return bool(deps.catalog.is_builtin(source))
    except Exception:  # noqa: BLE001 - an unknown source is not a built-in public one
        return False


def require_custodian(deps: Any, source: str, model_id: str) -> None:
    if not custodian_allowed(deps, source):
        raise ToolInputError(
            f"the quality report of model '{model_id}' is a custodian report: it contains non-private statistics of "
            f"the real records of '{source}', so it is shown only to the data custodian; if you are the custodian, set "
            "privacy.custodian_reports: true in your configuration (the data set's card shows DP fidelity instead)"
        )


# ---- fidelity against DP-released facts (shareable) --------------------------------------------
def dp_fidelity(model: Any, frame: pd.DataFrame, fixed: Mapping[str, Any] | None = None,
                proportions: Any = None) -> dict[str, Any]:
    """Fidelity of a synthetic data set against the DP-released facts its model stores: for each
    conditioning column in `frame`, the synthetic shares vs the shares of the model's noisy joint
    histogram (restricted to the cells of the `fixed` values), and 1 - TVD between them.

    Pure post-processing of DP releases: no real record is read and nothing is charged, so the
    result may go on a shareable data card. Columns fixed by the cohort definition or set by requested
    proportions are listed, not scored. Filters on other columns shift the synthetic shares away from
    the source population, so a lower score can reflect the cohort, not the model."""
    from synthehr.tools.engines.dpgan.encoding import MISSING

    enc = model.encoder
    hist = np.asarray(model.cond_hist, dtype=float)
    blocks = list(enc.cond_blocks)
    fixed = dict(fixed or {})
    prop_text = json.dumps(proportions, default=str) if proportions else ""
    sl: list[Any] = [slice(None)] * len(blocks)
    for j, b in enumerate(blocks):
        if b.name in fixed:
            try:
                sl[j] = enc.cond_code(b.name, fixed[b.name])
            except Exception:  # noqa: BLE001 - a value the encoder does not know: leave the axis whole
                pass
    sub = hist[tuple(sl)] if blocks else hist
    kept = [b for j, b in enumerate(blocks) if not isinstance(sl[j], (int, np.integer))]
    columns: dict[str, Any] = {}
    scores: list[float] = []
    for j, b in enumerate(kept):
        if b.name not in frame.columns:
            continue
        if b.name in prop_text:
            columns[b.name] = {"scored": False, "reason": "shares set by the requested proportions"}
            continue
        other = tuple(i for i in range(len(kept)) if i != j)
        ref = np.clip(sub.sum(axis=other) if other else sub, 0, None)
        if ref.sum() <= 0:
            columns[b.name] = {"scored": False, "reason": "the DP histogram has no mass in these cells"}
            continue
        ref = ref / ref.sum()
        codes = enc.discrete_codes(frame[b.name], b)
        syn = np.bincount(codes, minlength=b.width).astype(float)
        syn = syn / syn.sum() if syn.sum() > 0 else syn
        score = 1.0 - 0.5 * float(np.abs(syn - ref).sum())
        labels = ["missing" if c == MISSING else c for c in b.categories]
        columns[b.name] = {"scored": True, "tvd_complement": round(score, 4),
                           "synthetic_share": {k: round(float(v), 4) for k, v in zip(labels, syn)},
                           "dp_reference_share": {k: round(float(v), 4) for k, v in zip(labels, ref)}}
        scores.append(score)
    for b in blocks:
        if b.name in fixed and b.name not in columns:
            columns[b.name] = {"scored": False, "reason": f"fixed by the cohort definition ({b.name} = {fixed[b.name]})"}
    return {
        "reference": "the model's DP-released joint frequencies of its conditioning columns (as the model stores them), "
                     "restricted to the cohort's fixed values",
        "privacy_cost": "none: post-processing of DP releases; no real record is read",
        "mean_tvd_complement": round(float(np.mean(scores)), 4) if scores else None,
        "columns": columns,
        "note": "1 = the synthetic shares equal the DP-released shares; filters on other columns change the "
                "synthetic shares on purpose.",
    }
