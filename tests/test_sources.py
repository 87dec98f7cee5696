import json

import numpy as np
import pandas as pd
import pytest
import yaml

from synthehr.tools.store.catalog import Catalog, SourceError
from synthehr.tools.store.workspace import Workspace

META = {
    "name": "clinic-a",
    "title": "Clinic A diabetes registry (synthetic test fixture)",
    "publisher": "Clinic A",
    "url": "https://example.org/clinic-a",
    "licence": "internal use",
    "population": "adults seen at clinic A",
    "years": "2020-2022",
    "citation": "Clinic A registry, 2023.",
}
COLUMNS = [
    {"name": "age_years", "type": "integer", "unit": "years", "lower": 18, "upper": 90, "missing_allowed": False},
    {"name": "sex", "type": "categorical", "categories": ["female", "male"]},
    {"name": "hba1c_pct", "type": "continuous", "unit": "%", "lower": 3, "upper": 20, "loinc": "4548-4"},
    {"name": "diabetes", "type": "binary"},
]


def _fixture(tmp_path, n=120, meta=None, columns=None, frame_edit=None, suffix=".csv"):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "age_years": rng.integers(18, 90, n),
            "sex": rng.choice(["female", "male"], n),
            "hba1c_pct": np.round(rng.uniform(4.5, 11, n), 1),
            "diabetes": rng.integers(0, 2, n),
        }
    )
    df.loc[::10, "hba1c_pct"] = np.nan
    if frame_edit:
        df = frame_edit(df)
    data = tmp_path / f"data{suffix}"
    (df.to_csv(data, index=False) if suffix == ".csv" else df.to_parquet(data, index=False))
    meta_path = tmp_path / "meta.yaml"
    meta_path.write_text(yaml.safe_dump({"meta": meta or META, "columns": columns or COLUMNS, "condition_columns": ["diabetes", "sex"]}))
    return data, meta_path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_register_good_source(tmp_path, suffix):
    ws = Workspace(tmp_path / "ws")
    cat = Catalog(ws)
    data, meta = _fixture(tmp_path, suffix=suffix)
    schema = cat.register(data, meta)
    assert schema.name == "clinic-a"
    assert cat.names() == ["nhanes-2017-2018", "clinic-a"]
    frame = Catalog(Workspace(tmp_path / "ws")).load("clinic-a")
    assert len(frame) == 120 and frame["hba1c_pct"].isna().sum() == 12
    assert str(frame["sex"].dtype) == "category"
    info = cat.describe("clinic-a")
    assert info["kind"] == "user" and info["publisher"] == "Clinic A"


def _assert_nothing_registered(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert Catalog(ws).names() == ["nhanes-2017-2018"]
    assert list((ws.sources_dir).iterdir()) == []


@pytest.mark.parametrize(
    "edit, columns, expected",
    [
        (lambda d: d.assign(hba1c_pct=d["hba1c_pct"] * 10), None, r"column 'hba1c_pct'.*outside the declared bounds"),
        (lambda d: d.assign(sex=d["sex"].replace("female", "F")), None, r"column 'sex'.*not among the declared categories"),
        (lambda d: d.drop(columns=["diabetes"]), None, r"column 'diabetes' is declared .* not in the data file"),
        (lambda d: d.assign(extra=1), None, r"column 'extra' is in the data file but not declared"),
        (lambda d: d.assign(age_years=d["age_years"].astype(float).where(d.index % 7 != 0)), None, r"column 'age_years'.*missing"),
        (lambda d: d.assign(diabetes=d["diabetes"] + 1), None, r"column 'diabetes'.*binary"),
        (None, COLUMNS[:2] + [{"name": "hba1c_pct", "type": "continuous", "lower": 3}] + COLUMNS[3:], r"column 'hba1c_pct'"),
        (None, COLUMNS[:3] + [{"name": "diabetes", "type": "bool"}], r"column 'diabetes' field 'type'"),
    ],
)
def test_bad_sources_are_refused_naming_the_column(tmp_path, edit, columns, expected):
    ws = Workspace(tmp_path / "ws")
    data, meta = _fixture(tmp_path, frame_edit=edit, columns=columns)
    with pytest.raises(SourceError, match=expected):
        Catalog(ws).register(data, meta)
    _assert_nothing_registered(tmp_path)


def test_error_messages_never_quote_data_values(tmp_path):
    ws = Workspace(tmp_path / "ws")
    data, meta = _fixture(tmp_path, frame_edit=lambda d: d.assign(sex=d["sex"].replace("female", "SECRET-VALUE")))
    with pytest.raises(SourceError) as e:
        Catalog(ws).register(data, meta)
    assert "SECRET-VALUE" not in str(e.value)


def test_duplicate_and_builtin_names_refused(tmp_path):
    ws = Workspace(tmp_path / "ws")
    data, meta = _fixture(tmp_path)
    Catalog(ws).register(data, meta)
    with pytest.raises(SourceError, match="already registered"):
        Catalog(ws).register(data, meta)
    data2, meta2 = _fixture(tmp_path, meta={**META, "name": "nhanes-2017-2018"})
    with pytest.raises(SourceError, match="already registered"):
        Catalog(ws).register(data2, meta2)


def test_unknown_source_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="nhanes-2017-2018"):
        Catalog(Workspace(tmp_path)).get("mimic")


def test_failure_during_insert_leaves_nothing(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    data, meta = _fixture(tmp_path)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ws, "insert", boom)
    with pytest.raises(RuntimeError):
        Catalog(ws).register(data, meta)
    _assert_nothing_registered(tmp_path)
