"""Pure descriptive statistics over a data frame: summaries, threshold shares, group-bys, correlation.

No I/O, no workspace, no plotting: plain functions over pandas objects so they can be checked
against hand-computed values. Conventions:

- SD is the sample standard deviation (ddof = 1); quartiles use linear interpolation (pandas'
  default, the same as numpy's and R's type 7).
- Proportions and threshold shares are over the non-missing values; missing counts are reported
  beside them.
- A missing value never meets a threshold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

AGE_BAND = "age_band"
AGE_BAND_LABELS = ("18-44", "45-64", "65+")
AGE_COLUMN = "age_years"

OPS: dict[str, Any] = {
    ">=": np.greater_equal,
    ">": np.greater,
    "<=": np.less_equal,
    "<": np.less,
    "==": np.equal,
}
# Unicode and word spellings a user or model may write.
_OP_ALIASES = {"≥": ">=", "≤": "<=", "=>": ">=", "=<": "<=", "=": "=="}
_WORD_OPS = (
    (" at least ", " >= "), (" at most ", " <= "), (" greater than ", " > "), (" less than ", " < "),
    (" above ", " > "), (" over ", " > "), (" below ", " < "), (" under ", " < "),
)
_THRESHOLD_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_ ]*?)\s*(>=|<=|==|=>|=<|≥|≤|>|<|=)\s*([-+]?\d+(?:\.\d+)?)(?:\s*/\s*([-+]?\d+(?:\.\d+)?))?\s*%?\s*$")


def _f(x: Any) -> float | None:
    """A plain float for JSON (None for NaN/NA)."""
    if x is None or x is pd.NA:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


# ---- summaries ---------------------------------------------------------------------------------
def numeric_summary(values: pd.Series) -> dict[str, Any]:
    """count, missing, mean, SD (ddof 1), median, Q1, Q3, IQR, min, max of a numeric column."""
    s = pd.to_numeric(values, errors="coerce").astype(float)
    present = s.dropna()
    n = int(present.size)
    out: dict[str, Any] = {"kind": "numeric", "n": n, "missing": int(s.size - n)}
    if n == 0:
        out.update(mean=None, sd=None, median=None, q1=None, q3=None, iqr=None, min=None, max=None)
        return out
    q1, med, q3 = (float(v) for v in present.quantile([0.25, 0.5, 0.75]))
    out.update(
        mean=float(present.mean()),
        sd=_f(present.std(ddof=1)) if n > 1 else None,
        median=med,
        q1=q1,
        q3=q3,
        iqr=q3 - q1,
        min=float(present.min()),
        max=float(present.max()),
    )
    return out


def categorical_summary(values: pd.Series, categories: Sequence[str] | None = None) -> dict[str, Any]:
    """counts and proportions (of the non-missing values) of each category, in category order."""
    s = values.astype(object).where(values.notna(), None)
    present = s.dropna().map(str)
    n = int(present.size)
    if categories is None:
        if isinstance(values.dtype, pd.CategoricalDtype):
            categories = [str(c) for c in values.cat.categories]
        else:
            categories = sorted(present.unique().tolist())
    counts = present.value_counts()
    cats = list(categories) + sorted(set(counts.index) - set(categories))
    count_map = {c: int(counts.get(c, 0)) for c in cats}
    return {
        "kind": "categorical",
        "n": n,
        "missing": int(s.size - n),
        "counts": count_map,
        "proportions": {c: (k / n if n else None) for c, k in count_map.items()},
    }


def binary_summary(values: pd.Series) -> dict[str, Any]:
    """count of 1s and its proportion among the non-missing values of a 0/1 column."""
    s = pd.to_numeric(values.astype(object).where(values.notna(), None), errors="coerce").astype(float)
    present = s.dropna()
    n = int(present.size)
    ones = int((present == 1).sum())
    return {
        "kind": "binary",
        "n": n,
        "missing": int(s.size - n),
        "count_1": ones,
        "proportion_1": ones / n if n else None,
    }


def summarise(values: pd.Series, kind: str, categories: Sequence[str] | None = None) -> dict[str, Any]:
    """Summary of one column by its kind: numeric (continuous/integer), binary or categorical."""
    if kind in ("continuous", "integer", "numeric"):
        return numeric_summary(values)
    if kind == "binary":
        return binary_summary(values)
    return categorical_summary(values, categories)


# ---- thresholds --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThresholdSpec:
    """A cut point on one column ("hba1c_pct >= 9") or on blood pressure ("bp >= 130/80": SBP or DBP)."""

    column: str
    op: str
    value: float
    second_column: str | None = None  # blood pressure: the diastolic column
    second_value: float | None = None
    label: str = ""
    guideline: str | None = None

    @property
    def text(self) -> str:
        op = {">=": "≥", "<=": "≤"}.get(self.op, self.op)
        if self.second_column:
            return f"BP {op} {self.value:g}/{self.second_value:g}"
        return f"{self.column} {op} {self.value:g}"

    @property
    def short(self) -> str:
        op = {">=": "≥", "<=": "≤"}.get(self.op, self.op)
        if self.second_column:
            return f"{op}{self.value:g}/{self.second_value:g}"
        return f"{op}{self.value:g}"


def parse_threshold(text: str) -> tuple[str, str, float, float | None]:
    """Split "hba1c_pct>=9" into (name, op, value, second value or None). Raises ValueError."""
    words = re.sub(r"\s+", " ", f" {text.lower()} ")
    for phrase, op in _WORD_OPS:
        words = words.replace(phrase, op)
    m = _THRESHOLD_RE.match(words.strip())
    if not m:
        raise ValueError(f"cannot read threshold {text!r}; write it like 'hba1c_pct>=9' or 'bp>=130/80'")
    name, op, value, second = m.groups()
    op = _OP_ALIASES.get(op, op)
    return name.strip().lower().replace(" ", "_"), op, float(value), (float(second) if second is not None else None)


def threshold_mask(frame: pd.DataFrame, spec: ThresholdSpec) -> tuple[pd.Series, pd.Series]:
    """(meets, evaluable): rows meeting the threshold and rows where it could be evaluated.

    A blood-pressure threshold "≥ 130/80" is met when SBP meets the first value OR DBP the second
    (the ACC/AHA reading); "< 130/80" needs both below. It is evaluable when both readings exist.
    """
    fn = OPS[spec.op]
    a = pd.to_numeric(frame[spec.column], errors="coerce").astype(float)
    meets_a = pd.Series(fn(a.to_numpy(), spec.value), index=frame.index) & a.notna()
    if spec.second_column is None:
        return meets_a, a.notna()
    b = pd.to_numeric(frame[spec.second_column], errors="coerce").astype(float)
    meets_b = pd.Series(fn(b.to_numpy(), spec.second_value), index=frame.index) & b.notna()
    evaluable = a.notna() & b.notna()
    meets = (meets_a | meets_b) if spec.op in (">=", ">") else (meets_a & meets_b)
    return meets & evaluable, evaluable


def threshold_share(frame: pd.DataFrame, spec: ThresholdSpec) -> dict[str, Any]:
    """Share of the evaluable rows meeting a threshold, with the counts."""
    meets, evaluable = threshold_mask(frame, spec)
    n = int(evaluable.sum())
    k = int(meets.sum())
    return {
        "threshold": spec.text,
        "column": spec.column,
        "op": spec.op,
        "value": spec.value,
        **({"second_column": spec.second_column, "second_value": spec.second_value} if spec.second_column else {}),
        "label": spec.label,
        "guideline": spec.guideline,
        "n": n,
        "count": k,
        "share": k / n if n else None,
        "missing": int(len(frame) - n),
    }


# ---- grouping ----------------------------------------------------------------------------------
def age_band(age: pd.Series) -> pd.Series:
    """18-44 / 45-64 / 65+ from age in years (missing or under 18 stays missing)."""
    a = pd.to_numeric(age, errors="coerce").astype(float)
    return pd.cut(a, bins=[18, 45, 65, math.inf], right=False, labels=list(AGE_BAND_LABELS))


def with_age_band(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with an `age_band` column derived from `age_years` (unchanged when already there)."""
    if AGE_BAND in frame.columns or AGE_COLUMN not in frame.columns:
        return frame
    out = frame.copy()
    out[AGE_BAND] = age_band(frame[AGE_COLUMN])
    return out


def group_value(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "missing"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def group_by(
    frame: pd.DataFrame,
    by: Sequence[str],
    kinds: dict[str, str],
    categories: dict[str, Sequence[str] | None] | None = None,
    thresholds: Iterable[ThresholdSpec] = (),
) -> list[dict[str, Any]]:
    """Summaries of `kinds`' columns (and threshold shares) within each group of one or two columns.

    Returns one record per non-empty group, in category order: {"group": {col: value}, "n": rows,
    "stats": {col: summary}, "thresholds": [share, ...]}. Rows missing a grouping value form a
    "missing" group.
    """
    if not 1 <= len(by) <= 2:
        raise ValueError("group by one or two columns")
    categories = categories or {}
    thresholds = list(thresholds)
    keys = frame[list(by)].astype(object).map(group_value)

    def order(col: str) -> list[str]:
        s = frame[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            base = [str(c) for c in s.cat.categories]
        else:
            base = sorted({v for v in keys[col].unique() if v != "missing"})
        extra = sorted(set(keys[col].unique()) - set(base) - {"missing"})
        return base + extra + (["missing"] if "missing" in set(keys[col]) else [])

    levels = [order(c) for c in by]
    combos: list[tuple[str, ...]] = [(a,) for a in levels[0]] if len(by) == 1 else [(a, b) for a in levels[0] for b in levels[1]]
    out: list[dict[str, Any]] = []
    for combo in combos:
        mask = np.ones(len(frame), dtype=bool)
        for col, val in zip(by, combo):
            mask &= (keys[col] == val).to_numpy()
        if not mask.any():
            continue
        sub = frame.loc[mask]
        out.append(
            {
                "group": dict(zip(by, combo)),
                "n": int(mask.sum()),
                "stats": {c: summarise(sub[c], k, categories.get(c)) for c, k in kinds.items() if c not in by},
                "thresholds": [threshold_share(sub, t) for t in thresholds],
            }
        )
    return out


# ---- correlation -------------------------------------------------------------------------------
def correlation(x: pd.Series, y: pd.Series) -> dict[str, Any]:
    """Pearson and Spearman correlation (with two-sided p-values) over rows where both are present."""
    from scipy import stats

    a = pd.to_numeric(x, errors="coerce").astype(float)
    b = pd.to_numeric(y, errors="coerce").astype(float)
    both = a.notna() & b.notna()
    n = int(both.sum())
    out: dict[str, Any] = {"n": n, "pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None}
    if n < 3:
        return out
    av, bv = a[both].to_numpy(), b[both].to_numpy()
    if np.ptp(av) == 0 or np.ptp(bv) == 0:
        return out  # a constant column has no correlation
    pr = stats.pearsonr(av, bv)
    sr = stats.spearmanr(av, bv)
    out.update(
        pearson=_f(pr.statistic), pearson_p=_f(pr.pvalue), spearman=_f(sr.statistic), spearman_p=_f(sr.pvalue)
    )
    return out


def correlation_matrix(frame: pd.DataFrame, columns: Sequence[str], method: str = "pearson") -> pd.DataFrame:
    """Pairwise-complete correlation matrix of numeric columns."""
    num = frame[list(columns)].apply(lambda s: pd.to_numeric(s, errors="coerce").astype(float))
    return num.corr(method=method)


def infer_kind(values: pd.Series) -> str:
    """continuous | integer | binary | categorical, from the dtype and values (fallback when no schema)."""
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object or pd.api.types.is_string_dtype(values):
        return "categorical"
    if pd.api.types.is_bool_dtype(values):
        return "binary"
    present = pd.to_numeric(values, errors="coerce").dropna()
    if len(present) and set(np.unique(present.to_numpy())) <= {0, 1} and pd.api.types.is_integer_dtype(values):
        return "binary"
    if pd.api.types.is_integer_dtype(values):
        return "integer"
    return "continuous"
