"""Fidelity metrics that cannot hide a broken pair (issue 11), shared by the quality report and the benchmark.

Inputs are pandas frames plus a column spec: dicts {"name", "type" (continuous|integer|binary|
categorical), "lower", "upper", "categories"}. Only aggregates are returned, never a row.

- all_pairs_tvd: every pair of columns, total variation distance between the real and synthetic 2-way
  distributions (numeric columns cut at the real frame's quintiles, missing a cell of its own);
  mean over all pairs and the worst 5 pairs by name.
- top_correlation_error: absolute error of the synthetic Pearson correlation on the 10 real pairs with
  the strongest |correlation| (numeric and binary columns).
- predictor_signs: standardised logistic regression of the label on real and on synthetic data; of
  the real data's top-k predictors (|coefficient|) whose sign the real data determine (Wald |z| >= 1.96),
  the share whose sign the synthetic fit keeps, and which are reversed; the undetermined ones are named.
  Beside it the label's top-k marginal associations (correlation of each predictor with the label) and
  which of those the synthetic data reverse.
- cohort_fidelity: a cohort of the real data vs a conditional synthetic sample: TVD of age bands,
  sex and race/ethnicity, and the difference of means of the numeric columns (in real SD units).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

NUMERIC = ("continuous", "integer")
AGE_BANDS = (18, 30, 45, 65, 200)


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").astype(float).to_numpy()


def _labels(s: pd.Series) -> np.ndarray:
    def norm(v: Any) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return "<missing>"
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return s.astype(object).map(norm).to_numpy()


def _cells(real: pd.DataFrame, synth: pd.DataFrame, col: dict, q: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Cell labels of both frames for one column (numeric: real quintiles; missing: own cell)."""
    name = col["name"]
    if col["type"] in NUMERIC:
        r, s = _num(real[name]), _num(synth[name])
        edges = np.unique(np.nanquantile(r, np.linspace(0, 1, q + 1)[1:-1])) if np.isfinite(r).any() else np.array([])
        cut = lambda x: np.where(np.isnan(x), -1, np.searchsorted(edges, x, side="right"))  # noqa: E731
        return cut(r).astype(str), cut(s).astype(str)
    return _labels(real[name]), _labels(synth[name])


def _tvd(a: np.ndarray, b: np.ndarray) -> float:
    pa = pd.Series(a).value_counts(normalize=True)
    pb = pd.Series(b).value_counts(normalize=True)
    keys = pa.index.union(pb.index)
    return float(0.5 * np.abs(pa.reindex(keys, fill_value=0) - pb.reindex(keys, fill_value=0)).sum())


def all_pairs_tvd(real: pd.DataFrame, synth: pd.DataFrame, spec: Sequence[dict], worst: int = 5) -> dict[str, Any]:
    cols = [c for c in spec if c["name"] in real and c["name"] in synth]
    cells = {c["name"]: _cells(real, synth, c) for c in cols}
    out = []
    for a, b in itertools.combinations([c["name"] for c in cols], 2):
        ra = np.char.add(np.char.add(cells[a][0].astype(str), "|"), cells[b][0].astype(str))
        sa = np.char.add(np.char.add(cells[a][1].astype(str), "|"), cells[b][1].astype(str))
        out.append((a, b, _tvd(ra, sa)))
    if not out:
        return {"mean": None, "worst": [], "pairs": 0}
    out.sort(key=lambda t: -t[2])
    return {"mean": round(float(np.mean([t[2] for t in out])), 4), "pairs": len(out),
            "worst": [{"a": a, "b": b, "tvd": round(v, 4)} for a, b, v in out[:worst]]}


def _corr_frame(frame: pd.DataFrame, spec: Sequence[dict]) -> pd.DataFrame:
    return pd.DataFrame({c["name"]: _num(frame[c["name"]]) for c in spec
                         if c["type"] in NUMERIC or c["type"] == "binary"})


def top_correlation_error(real: pd.DataFrame, synth: pd.DataFrame, spec: Sequence[dict], k: int = 10) -> dict[str, Any]:
    cols = [c for c in spec if c["name"] in real and c["name"] in synth]
    cr, cs = _corr_frame(real, cols).corr(min_periods=20), _corr_frame(synth, cols).corr(min_periods=20)
    names = list(cr.columns)
    pairs = [(a, b, float(cr.loc[a, b])) for a, b in itertools.combinations(names, 2) if np.isfinite(cr.loc[a, b])]
    pairs.sort(key=lambda t: -abs(t[2]))
    top = []
    for a, b, r in pairs[:k]:
        s = float(cs.loc[a, b]) if np.isfinite(cs.loc[a, b]) else 0.0
        top.append({"a": a, "b": b, "real": round(r, 3), "synthetic": round(s, 3), "abs_error": round(abs(r - s), 3)})
    return {"mean_abs_error": round(float(np.mean([t["abs_error"] for t in top])), 4) if top else None,
            "max_abs_error": max((t["abs_error"] for t in top), default=None), "pairs": top}


def _design(frame: pd.DataFrame, spec: Sequence[dict], features: Sequence[str], ref: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    cols = {c["name"]: c for c in spec}
    blocks, names = [], []
    for f in features:
        c = cols[f]
        if c["type"] in NUMERIC or c["type"] == "binary":
            x, r = _num(frame[f]), _num(ref[f])
            med = np.nanmedian(r) if np.isfinite(r).any() else 0.0
            x = np.where(np.isnan(x), med, x)
            mu, sd = np.nanmean(np.where(np.isnan(r), med, r)), np.nanstd(np.where(np.isnan(r), med, r)) or 1.0
            blocks.append(((x - mu) / sd)[:, None])
            names.append(f)
        else:
            lab = _labels(frame[f])
            for cat in (c.get("categories") or [])[1:]:  # first category is the reference
                blocks.append((lab == str(cat)).astype(float)[:, None])
                names.append(f"{f}={cat}")
    return (np.hstack(blocks) if blocks else np.zeros((len(frame), 0))), names


def _wald_z(x: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: float, c: float) -> np.ndarray:
    """Wald z of each coefficient of an L2-penalised logistic regression (penalty 1 / (2C) ||w||^2, as
    scikit-learn's): coefficient over the square root of the inverse penalised Hessian's diagonal."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    p = 1.0 / (1.0 + np.exp(-(xa @ np.append(coef, intercept))))
    h = (xa * (p * (1 - p))[:, None]).T @ xa
    h[np.arange(x.shape[1]), np.arange(x.shape[1])] += 1.0 / c
    se = np.sqrt(np.clip(np.diag(np.linalg.pinv(h))[: x.shape[1]], 1e-12, None))
    return coef / se


def predictor_signs(real: pd.DataFrame, synth: pd.DataFrame, spec: Sequence[dict], label: str,
                    exclude: Sequence[str] = (), k: int = 5, z_min: float = 1.96) -> dict[str, Any]:
    """Sign agreement of the real data's top-k standardised logistic-regression predictors.

    A sign counts only where the real data determine it: the real coefficient's Wald |z| >= z_min (a 95 %
    interval excluding zero). Collinear partial effects fitted on a few hundred records (breast cancer's
    radius, perimeter and area) often are not: their sign flips between two halves of the real data
    themselves, and calling a synthetic sample "reversed" there would report noise. Those are listed under
    `undetermined` with the synthetic sign, not counted. `agreement` is over the determined ones."""
    from sklearn.linear_model import LogisticRegression

    none = {"agreement": None, "reversed": [], "top": [], "undetermined": [], "marginal": {"top": [], "reversed": []}}
    feats = [c["name"] for c in spec if c["name"] != label and c["name"] not in exclude and c["name"] in synth]
    y_r, y_s = _labels(real[label]), _labels(synth[label])
    pos = sorted(set(y_r) - {"<missing>"})[-1] if len(set(y_r) - {"<missing>"}) else None
    if pos is None or len(set(y_s)) < 2 or len(set(y_r)) < 2:
        return none
    xr, names = _design(real, spec, feats, real)
    xs, _ = _design(synth, spec, feats, real)
    yr, ys = (y_r == pos).astype(float), (y_s == pos).astype(float)
    c = 1.0
    try:
        mr = LogisticRegression(max_iter=2000, C=c).fit(xr, yr)
        cs = LogisticRegression(max_iter=2000, C=c).fit(xs, ys).coef_[0]
    except ValueError:
        return none
    cr = mr.coef_[0]
    z = _wald_z(xr, yr, cr, float(mr.intercept_[0]), c)
    order = np.argsort(-np.abs(cr))[:k]
    top = [{"feature": names[i], "real": round(float(cr[i]), 3), "synthetic": round(float(cs[i]), 3),
            "real_z": round(float(z[i]), 2), "determined": bool(abs(z[i]) >= z_min)} for i in order]
    det = [t for t in top if t["determined"]]
    rev = [t["feature"] for t in det if np.sign(t["real"]) != np.sign(t["synthetic"])]
    return {"agreement": round(1 - len(rev) / len(det), 3) if det else None, "reversed": rev, "top": top,
            "undetermined": [t["feature"] for t in top if not t["determined"]],
            "marginal": _marginal_signs(xr, yr, xs, ys, names, k, z_min)}


def _marginal_signs(xr: np.ndarray, yr: np.ndarray, xs: np.ndarray, ys: np.ndarray, names: list[str], k: int,
                    z_min: float) -> dict[str, Any]:
    """The label's top-k marginal associations (Pearson correlation of each design column with the label,
    the direction a reader checks first: "insulin users have higher HbA1c") on real and synthetic data.
    A real correlation r counts when |r| sqrt(n) >= z_min; `reversed` names those whose synthetic sign differs."""
    def corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xc, yc = x - x.mean(axis=0), y - y.mean()
        den = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum())
        return np.divide(xc.T @ yc, den, out=np.zeros(x.shape[1]), where=den > 0)

    rr, rs = corr(xr, yr), corr(xs, ys)
    order = np.argsort(-np.abs(rr))[:k]
    top = [{"feature": names[i], "real": round(float(rr[i]), 3), "synthetic": round(float(rs[i]), 3),
            "determined": bool(abs(rr[i]) * math.sqrt(len(yr)) >= z_min)} for i in order]
    rev = [t["feature"] for t in top if t["determined"] and np.sign(t["real"]) != np.sign(t["synthetic"])]
    return {"top": top, "reversed": rev}


def cohort_fidelity(real: pd.DataFrame, synth: pd.DataFrame, spec: Sequence[dict]) -> dict[str, Any]:
    """Real cohort vs a conditional synthetic sample: demographic TVDs and standardised mean differences."""
    out: dict[str, Any] = {"n_real": len(real), "n_synthetic": len(synth)}
    names = {c["name"] for c in spec}
    if "age_years" in names:
        cut = lambda s: pd.cut(_num(s), AGE_BANDS, right=False).astype(str)  # noqa: E731
        out["age_band_tvd"] = round(_tvd(np.asarray(cut(real["age_years"])), np.asarray(cut(synth["age_years"]))), 4)
    for col in ("sex", "race_ethnicity"):
        if col in names:
            out[f"{col}_tvd"] = round(_tvd(_labels(real[col]), _labels(synth[col])), 4)
    smd = {}
    for c in spec:
        if c["type"] in NUMERIC and c["name"] in synth:
            r, s = _num(real[c["name"]]), _num(synth[c["name"]])
            if np.isfinite(r).sum() > 1 and np.isfinite(s).any():
                sd = float(np.nanstd(r)) or 1.0
                smd[c["name"]] = round(float((np.nanmean(s) - np.nanmean(r)) / sd), 3)
    out["mean_diff_sd"] = smd
    out["max_abs_mean_diff_sd"] = round(max((abs(v) for v in smd.values()), default=0.0), 3)
    return out


def spec_of(schema: Any) -> list[dict]:
    """A column spec from a SourceSchema (duck-typed: columns with name/type/lower/upper/categories)."""
    return [{"name": c.name, "type": getattr(c.type, "value", c.type), "lower": c.lower, "upper": c.upper,
             "categories": c.categories} for c in schema.columns]
