"""Deterministic consistency rules applied to generated records (post-processing, no privacy cost).

Some harmonised columns are functions of others (BMI = weight / height^2, non-HDL = total - HDL,
duration = age - age at diagnosis, the ADA diabetes flag). A generator learns them only
approximately, so they are re-derived after sampling - before any cohort filter is checked, so
the filters hold for the final values. A rule runs only when all its columns are in the schema.
Results are clipped to the public bounds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthehr.tools.store.schema import SourceSchema


def _num(frame: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(frame[col], errors="coerce").astype(float).to_numpy()


def _set_float(frame: pd.DataFrame, schema: SourceSchema, col: str, values: np.ndarray) -> None:
    c = schema.column(col)
    v = np.clip(values, c.lower, c.upper)
    if not c.missing_allowed:
        v = np.where(np.isnan(v), _num(frame, col), v)
    if c.type.value == "integer":
        arr = pd.array(np.where(np.isnan(v), 0, np.rint(v)).astype(np.int64), dtype="Int64")
        arr[np.isnan(v)] = pd.NA
        frame[col] = arr
    else:
        frame[col] = v


def _set_binary(frame: pd.DataFrame, col: str, values: np.ndarray, schema: SourceSchema | None = None) -> None:
    if schema is not None and not schema.column(col).missing_allowed:
        values = np.where(np.isnan(values), _num(frame, col), values)
    arr = pd.array(np.where(np.isnan(values), 0, values).astype(np.int8), dtype="Int8")
    arr[np.isnan(values)] = pd.NA
    frame[col] = arr


def apply_rules(frame: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    cols = set(schema.column_map())
    if not len(frame):
        return frame
    has = lambda *names: all(n in cols for n in names)  # noqa: E731
    if has("total_chol_mg_dl", "hdl_mg_dl", "non_hdl_chol_mg_dl"):
        tot, hdl = _num(frame, "total_chol_mg_dl"), _num(frame, "hdl_mg_dl")
        # HDL cannot exceed total cholesterol.
        hdl = np.where(hdl >= tot, tot * 0.9, hdl)
        _set_float(frame, schema, "hdl_mg_dl", hdl)
        _set_float(frame, schema, "non_hdl_chol_mg_dl", tot - _num(frame, "hdl_mg_dl"))
    if has("bmi_kg_m2", "height_cm", "weight_kg"):
        bmi, h = _num(frame, "bmi_kg_m2"), _num(frame, "height_cm")
        w = bmi * (h / 100.0) ** 2
        _set_float(frame, schema, "weight_kg", np.where(np.isnan(w), _num(frame, "weight_kg"), w))
        w2, h2 = _num(frame, "weight_kg"), _num(frame, "height_cm")
        _set_float(frame, schema, "bmi_kg_m2", np.where(np.isnan(w2 * h2), bmi, w2 / (h2 / 100.0) ** 2))
    if has("diabetes_diagnosed", "diabetes_age_at_diagnosis", "age_years"):
        dx = _num(frame, "diabetes_diagnosed")
        age, at = _num(frame, "age_years"), _num(frame, "diabetes_age_at_diagnosis")
        # Diagnosed in adulthood at the latest at the current age: duration <= age - 18 (coherence rule).
        at = np.where(dx == 1, np.clip(at, np.minimum(18.0, age), age), np.nan)
        _set_float(frame, schema, "diabetes_age_at_diagnosis", at)
        if has("diabetes_duration_years"):
            _set_float(frame, schema, "diabetes_duration_years", age - _num(frame, "diabetes_age_at_diagnosis"))
    if has("diabetes_diagnosed", "insulin_now"):
        dx, ins = _num(frame, "diabetes_diagnosed"), _num(frame, "insulin_now")
        _set_binary(frame, "insulin_now", schema=schema, values=np.where((dx != 1) & ~np.isnan(ins), 0.0, ins))
    if has("diabetes_diagnosed", "prediabetes_told", "diabetes_pills"):
        dx, pre, pills = _num(frame, "diabetes_diagnosed"), _num(frame, "prediabetes_told"), _num(frame, "diabetes_pills")
        _set_binary(frame, "diabetes_pills", schema=schema, values=np.where((dx != 1) & (pre != 1) & ~np.isnan(pills), 0.0, pills))
    if has("diabetes", "diabetes_diagnosed", "hba1c_pct"):
        dx, a1c = _num(frame, "diabetes_diagnosed"), _num(frame, "hba1c_pct")
        flag = np.full(len(frame), np.nan)
        flag[(dx == 0) & (a1c < 6.5)] = 0.0
        flag[(dx == 1) | (a1c >= 6.5)] = 1.0
        _set_binary(frame, "diabetes", flag, schema)
    return frame


def presence_overrides(schema: SourceSchema, diagnosed: np.ndarray | None) -> dict[str, np.ndarray]:
    """Missingness masks fixed by coherence rules, from the generated diagnosis flag (1 = diagnosed):
    age at diagnosis (hence duration) is present exactly when diabetes is diagnosed."""
    cols = set(schema.column_map())
    if diagnosed is None or "diabetes_age_at_diagnosis" not in cols:
        return {}
    return {"diabetes_age_at_diagnosis": np.asarray(diagnosed) != 1}


def round_to_precision(frame: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Round every numeric column with a declared `precision` to a multiple of it, inside its bounds."""
    if not len(frame):
        return frame
    for c in schema.columns:
        if not c.is_numeric or c.precision is None or c.name not in frame:
            continue
        p = float(c.precision)
        v = _num(frame, c.name)
        lo, hi = np.ceil(c.lower / p - 1e-9) * p, np.floor(c.upper / p + 1e-9) * p
        r = np.clip(np.round(v / p) * p, lo, hi)
        digits = max(0, -int(np.floor(np.log10(p)))) if p < 1 else 0
        r = np.round(r, digits)
        if c.type.value == "integer":
            arr = pd.array(np.where(np.isnan(r), 0, r).astype(np.int64), dtype="Int64")
            arr[np.isnan(r)] = pd.NA
            frame[c.name] = arr
        else:
            frame[c.name] = r
    return frame
