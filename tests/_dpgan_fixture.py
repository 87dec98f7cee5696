"""A small synthetic source for the DP-GAN tests (made-up records, never real ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from synthehr.tools.store.catalog import coerce_frame
from synthehr.configs.settings import TrainingSettings
from synthehr.tools.store.schema import Column, ColumnType, SourceMeta, SourceSchema

C, I, B, K = ColumnType.continuous, ColumnType.integer, ColumnType.binary, ColumnType.categorical

FIXTURE_META = SourceMeta(
    name="fixture-clinic", title="Fixture clinic (synthetic test records)", publisher="synthehr tests",
    url="https://example.org/fixture", licence="CC0", population="US adults (made-up test population)",
    years="2024", citation="synthehr test fixture",
    description="Made-up records for tests. Diabetes flag `diabetes == 1` as in NHANES.")

FIXTURE_COLUMNS = [
    Column(name="age_years", type=I, lower=18, upper=90, missing_allowed=False, label="Age", unit="years"),
    Column(name="sex", type=K, categories=["female", "male"], missing_allowed=False, label="Sex"),
    Column(name="race_ethnicity", type=K, categories=["A", "B", "C"], missing_allowed=False, label="Group"),
    Column(name="bmi_kg_m2", type=C, lower=12, upper=70, label="BMI", unit="kg/m2", precision=0.1),
    Column(name="hba1c_pct", type=C, lower=3, upper=16, label="HbA1c", unit="%", precision=0.1),
    Column(name="sbp_mmhg", type=C, lower=70, upper=240, label="SBP", unit="mmHg", precision=1),
    Column(name="diabetes_diagnosed", type=B, label="Diagnosed"),
    Column(name="diabetes", type=B, label="Diabetes", missing_allowed=False),
    Column(name="smoking_status", type=K, categories=["never", "former", "current"], label="Smoking"),
]

FIXTURE_SCHEMA = SourceSchema(meta=FIXTURE_META, columns=FIXTURE_COLUMNS, condition_columns=["diabetes", "sex"])


def fixture_frame(n: int = 500, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    sex = rng.choice(["female", "male"], n)
    race = rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2])
    bmi = np.clip(rng.normal(28, 5, n), 12, 70).round(1)
    diab = (rng.random(n) < 0.1 + 0.004 * (age - 18)).astype(int)
    a1c = np.clip(np.where(diab == 1, rng.normal(7.8, 1.2, n), rng.normal(5.4, 0.4, n)), 3, 16).round(1)
    sbp = np.clip(rng.normal(115 + 0.5 * (age - 18), 12, n), 70, 240).round(1)
    dx = np.where(diab == 1, (a1c < 6.5) | (rng.random(n) < 0.8), 0).astype(int)
    diab = np.where((dx == 1) | (a1c >= 6.5), 1, 0)
    smoke = rng.choice(["never", "former", "current"], n, p=[0.55, 0.25, 0.2])
    frame = pd.DataFrame({"age_years": age, "sex": sex, "race_ethnicity": race, "bmi_kg_m2": bmi, "hba1c_pct": a1c,
                          "sbp_mmhg": sbp, "diabetes_diagnosed": dx, "diabetes": diab, "smoking_status": smoke})
    frame["bmi_kg_m2"] = frame["bmi_kg_m2"].mask(rng.random(n) < 0.10)
    frame["sbp_mmhg"] = frame["sbp_mmhg"].mask(rng.random(n) < 0.20)
    frame["smoking_status"] = frame["smoking_status"].mask(rng.random(n) < 0.05)
    return coerce_frame(frame, FIXTURE_SCHEMA)


def fast_settings(**over: object) -> TrainingSettings:
    base = {"epochs": 3, "batch_size": 128, "threads": 1, "marginal_pretrain_steps": 30}
    base.update(over)
    return TrainingSettings(**base)


def write_source(tmp: Path, n: int = 500) -> tuple[Path, Path]:
    """A CSV + META.yaml pair to register through the catalog."""
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "fixture.csv"
    fixture_frame(n).to_csv(data, index=False)
    meta = tmp / "META.yaml"
    body = {"meta": FIXTURE_META.model_dump(), "condition_columns": FIXTURE_SCHEMA.condition_columns,
            "columns": [c.model_dump(mode="json", exclude_none=True) for c in FIXTURE_COLUMNS]}
    meta.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return data, meta
