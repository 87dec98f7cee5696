import json

import numpy as np
import pandas as pd
import pytest

from synthehr.tools.base import ToolInputError
from synthehr.tools.export import ExportArgs, export_dataset


def _make_dataset(deps, ds_id="ds-test-1", n=5):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "age_years": rng.integers(40, 80, n),
            "sex": rng.choice(["female", "male"], n),
            "hba1c_pct": np.round(rng.uniform(6.5, 10, n), 1),
            "smoking_status": rng.choice(["never", "former", "current"], n),
        }
    )
    frame.loc[0, "hba1c_pct"] = np.nan
    folder = deps.workspace.datasets_dir / ds_id
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "data.parquet")
    card = {
        "dataset_id": ds_id,
        "columns": [
            {"name": "age_years", "label": "Age", "unit": "years", "type": "integer", "loinc": "30525-0"},
            {"name": "sex", "label": "Sex", "type": "categorical", "loinc": "46098-0"},
            {"name": "hba1c_pct", "label": "HbA1c", "unit": "%", "type": "continuous", "loinc": "4548-4"},
            {"name": "smoking_status", "label": "Smoking", "type": "categorical", "loinc": "72166-2"},
        ],
    }
    (folder / "card.json").write_text(json.dumps(card))
    deps.workspace.insert("datasets", {"id": ds_id, "source": "nhanes-2017-2018", "n_rows": n, "dir": str(folder),
                                       "created_at": "2026-01-01T00:00:00", "card_json": card})
    return frame


def test_exports_fhir_ndjson(deps):
    _make_dataset(deps)
    r = export_dataset(deps, ExportArgs(dataset="last"))
    lines = [json.loads(x) for x in open(r.files[0])]
    patients = [x for x in lines if x["resourceType"] == "Patient"]
    obs = [x for x in lines if x["resourceType"] == "Observation"]
    assert len(patients) == 5
    # 5 ages + 4 HbA1c (one missing) + 5 smoking statuses; sex goes on the Patient.
    assert len(obs) == 14
    a1c = [o for o in obs if o["code"]["coding"][0]["code"] == "4548-4"]
    assert a1c[0]["valueQuantity"]["code"] == "%" and a1c[0]["subject"]["reference"].startswith("Patient/")
    assert all(x["meta"]["tag"][0]["code"] == "HTEST" for x in lines)
    assert {p["gender"] for p in patients} <= {"female", "male"}


def test_exports_bundle_and_unknown_dataset(deps):
    _make_dataset(deps)
    r = export_dataset(deps, ExportArgs(dataset="ds-test-1", format="fhir-bundle"))
    bundle = json.load(open(r.files[0]))
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == r.data["patients"] + r.data["observations"]
    with pytest.raises(ToolInputError, match="ds-test-1"):
        export_dataset(deps, ExportArgs(dataset="ds-nope"))


def test_no_dataset_yet_is_corrective(deps):
    with pytest.raises(ToolInputError, match="generate a cohort first"):
        export_dataset(deps, ExportArgs())
