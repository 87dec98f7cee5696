"""export_dataset: write a generated (synthetic) data set as HL7 FHIR R4 resources.

Each synthetic record becomes a Patient plus one Observation per coded measurement (LOINC code,
UCUM unit). Output is FHIR NDJSON (one resource per line, the Bulk Data format) or a
transaction Bundle. Only synthetic data sets can be exported; every resource is tagged synthetic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from synthehr.tools.base import ToolResult, ToolSpec
from synthehr.tools.store.datasets import dataset_card, resolve_dataset
from synthehr.tools.deps import Deps
from synthehr.tools.store.workspace import atomic_write_text

UCUM = {"%": "%", "mg/dL": "mg/dL", "mmHg": "mm[Hg]", "kg/m2": "kg/m2", "kg": "kg", "cm": "cm", "/min": "/min",
        "years": "a", "ratio": "1", "mL/min/1.73m2": "mL/min/{1.73_m2}", "mg/g": "mg/g", "U/L": "U/L"}
SYNTHETIC_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST", "display": "test health data"}
SMOKING = {  # LOINC 72166-2 answers (SNOMED CT), US Core smoking status value set
    "never": ("266919005", "Never smoked tobacco"),
    "former": ("8517006", "Ex-smoker"),
    "current": ("77176002", "Smoker"),
}


class ExportArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("last", json_schema_extra={"role": "dataset"}, description="Data set id, or 'last' for the most recent one.")
    format: Literal["fhir-ndjson", "fhir-bundle"] = Field("fhir-ndjson", description="FHIR NDJSON or one transaction Bundle.")


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def to_fhir(frame: Any, card: dict[str, Any]) -> list[dict[str, Any]]:
    """FHIR R4 resources for a synthetic frame; columns with a LOINC code become Observations."""
    columns = {c["name"]: c for c in card.get("columns", [])}
    ds = card.get("dataset_id", "dataset")
    meta = {"tag": [SYNTHETIC_TAG], "source": f"urn:synthehr:{ds}"}
    resources: list[dict[str, Any]] = []
    for i, rec in enumerate(frame.to_dict(orient="records")):
        pid = f"{ds}-{i + 1}"
        patient: dict[str, Any] = {"resourceType": "Patient", "id": pid, "meta": meta}
        if _finite(rec.get("sex")):
            patient["gender"] = str(rec["sex"])
        resources.append(patient)
        for name, value in rec.items():
            col = columns.get(name, {})
            loinc = col.get("loinc")
            if not loinc or not _finite(value) or name == "sex":
                continue
            obs: dict[str, Any] = {
                "resourceType": "Observation",
                "id": f"{pid}-{name.replace('_', '-')}",
                "meta": meta,
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": col.get("label") or name}]},
                "subject": {"reference": f"Patient/{pid}"},
            }
            if name == "smoking_status" and str(value) in SMOKING:
                code, display = SMOKING[str(value)]
                obs["valueCodeableConcept"] = {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}
            elif isinstance(value, (int, float)):
                unit = col.get("unit") or ""
                obs["valueQuantity"] = {"value": round(float(value), 2), "unit": unit,
                                        "system": "http://unitsofmeasure.org", "code": UCUM.get(unit, unit)}
            else:
                obs["valueString"] = str(value)
            resources.append(obs)
    return resources


def export_dataset(deps: Deps, args: ExportArgs) -> ToolResult:
    import pandas as pd

    row = resolve_dataset(deps, args.dataset)
    card = dataset_card(row)
    folder = Path(row["dir"])
    frame = pd.read_parquet(folder / "data.parquet")
    resources = to_fhir(frame, card)
    if args.format == "fhir-ndjson":
        path = folder / "fhir.ndjson"
        atomic_write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in resources))
    else:
        path = folder / "fhir-bundle.json"
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "meta": {"tag": [SYNTHETIC_TAG]},
            "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
            ],
        }
        atomic_write_text(path, json.dumps(bundle))
    n_obs = sum(r["resourceType"] == "Observation" for r in resources)
    text = (
        f"Exported data set {row['id']} as {args.format}: {len(frame)} synthetic Patient resources and {n_obs} "
        f"Observation resources (LOINC-coded) to {path}."
    )
    from synthehr.tools.base import Figure

    return ToolResult(text=text, data={"dataset": row["id"], "path": str(path), "patients": len(frame), "observations": n_obs},
                      files=[str(path)], summary=f"I exported {row['id']} as HL7 FHIR R4 ({args.format}).",
                      figures=[Figure(label="Patient resources", value=len(frame)),
                               Figure(label="LOINC-coded Observation resources", value=n_obs)])


SPEC = ToolSpec(
    name="export_dataset",
    description=(
        "Export a generated synthetic data set as HL7 FHIR R4 resources (Patient + LOINC-coded Observations), "
        "as NDJSON or a transaction Bundle, for loading into an EHR or FHIR server."
    ),
    args_model=ExportArgs,
    func=export_dataset,
    examples=("export the last cohort as FHIR", "give me the data as a FHIR bundle"),
    router_examples=("convert the synthetic patients to FHIR NDJSON", "export these records to FHIR R4"),
    describe=lambda deps, args: (f"Exporting {'the last data set' if args.dataset == 'last' else args.dataset} "
                                 f"as HL7 FHIR ({args.format})."),
    router_cues=(
        r'\b(?:export|fhir|ndjson|bundle)\b'
    ),
)
