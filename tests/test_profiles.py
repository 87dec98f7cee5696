"""Condition profiles (knowledge/conditions) and knowledge documents (sources, guidelines, methods)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synthehr.tools.store.profiles import (
    Cohort,
    CohortRule,
    ConditionProfile,
    ProfileError,
    ProfileNotFound,
    Threshold,
    document_ids,
    document_paths,
    document_sections,
    guideline_ids,
    load_profiles,
    parse_document,
    resolve_condition,
)

KNOWLEDGE = Path(__file__).resolve().parents[1] / "knowledge"

# The harmonised NHANES 2017-2018 adult columns (the only names a source_column may use).
from synthehr.tools.store.sources import nhanes  # noqa: E402
NHANES_COLUMNS = frozenset(c.name for c in nhanes.SCHEMA.columns)
NHANES_MISSING = {"fasting_plasma_glucose", "ldl_cholesterol", "triglycerides", "serum_creatinine",
                  "egfr", "urine_albumin_creatinine_ratio", "alt", "potassium"}
EXPECTED_PROFILES = {"type-2-diabetes", "hypertension", "heart-failure", "chronic-kidney-disease", "copd"}
EXPECTED_DOCS = {
    "sources": {"nhanes", "brfss", "mimic-iii", "mimic-iv", "eicu-crd", "synthea", "uk-biobank",
                "all-of-us", "n3c", "cdc-wonder", "omop-cdm", "hl7-fhir", "cdc-ndsr"},
    "guidelines": {"ada-standards-of-care", "acc-aha-2017-blood-pressure", "kdigo-2024-ckd",
                   "aha-acc-hfsa-2022-heart-failure", "gold-2024-copd"},
    "methods": {"differential-privacy", "dp-sgd-and-accountants", "dp-gan", "evaluation-metrics",
                "synthetic-data-limits"},
}
KIND_OF_DIR = {"sources": "source", "guidelines": "guideline", "methods": "method"}


@pytest.fixture(scope="module")
def profiles() -> dict[str, ConditionProfile]:
    return load_profiles()


# -- profiles ------------------------------------------------------------------------------
def test_every_profile_validates_and_is_present(profiles):
    assert set(profiles) == EXPECTED_PROFILES
    # the explicit directory path gives the same result as the packaged default
    assert set(load_profiles(KNOWLEDGE / "conditions")) == EXPECTED_PROFILES
    for p in profiles.values():
        assert len(p.observations) >= 8, p.id
        assert p.definition and p.aliases


def test_t2d_has_twenty_ranked_observations_with_units_and_bounds(profiles):
    t2d = profiles["type-2-diabetes"]
    assert len(t2d.observations) >= 24
    assert t2d.observations[0].name == "hba1c"
    numeric = [o for o in t2d.observations if o.numeric]
    assert len(numeric) >= 20
    for o in t2d.observations:
        assert o.unit.strip()
        if o.numeric:
            assert o.lower is not None and o.upper is not None and o.lower < o.upper, o.name
    # 20 observations the source really has: the headline request is satisfiable honestly
    assert len(t2d.available_observations(NHANES_COLUMNS)) >= 20
    missing = {o.name for o in t2d.missing_observations(NHANES_COLUMNS)}
    assert NHANES_MISSING <= missing
    top = t2d.top_observations(20)
    assert [o.name for o in top] == [o.name for o in t2d.observations[:20]]
    assert {o.name for o in t2d.available_observations(NHANES_COLUMNS)} | missing == {
        o.name for o in t2d.observations
    }


def test_t2d_thresholds_and_cohort(profiles):
    t2d = profiles["type-2-diabetes"]
    hba1c = t2d.observation("hba1c")
    diag = next(t for t in hba1c.thresholds if "diagnosis" in t.label)
    assert (diag.op, diag.value) == (">=", 6.5)
    assert diag.applies(6.5) and not diag.applies(6.4) and not diag.applies(None)
    assert any(t.op == "<" and t.value == 7.0 for t in hba1c.thresholds)
    assert t2d.source == "nhanes-2017-2018"
    assert t2d.cohort.matches({"age_years": 50, "diabetes_diagnosed": 1, "hba1c_pct": 5.5})
    assert t2d.cohort.matches({"age_years": 50, "diabetes_diagnosed": 0, "hba1c_pct": 6.5})
    assert not t2d.cohort.matches({"age_years": 50, "diabetes_diagnosed": 0, "hba1c_pct": 6.4})
    assert not t2d.cohort.matches({"age_years": 50, "diabetes_diagnosed": 0, "hba1c_pct": float("nan")})
    assert not t2d.cohort.matches({"age_years": 16, "diabetes_diagnosed": 1})


def test_source_columns_are_harmonised_nhanes_columns(profiles):
    for p in profiles.values():
        assert p.source_columns() <= NHANES_COLUMNS, (p.id, p.source_columns() - NHANES_COLUMNS)
        if p.source == "nhanes-2017-2018":
            assert p.cohort.columns() <= NHANES_COLUMNS, p.id
        else:
            assert p.source is None
            assert p.cohort.columns() <= {o.name for o in p.observations}
        for o in p.observations:
            if o.name in NHANES_MISSING:
                assert o.source_column is None, (p.id, o.name)


def test_conditions_without_a_source_say_so(profiles):
    for pid in ("heart-failure", "copd", "chronic-kidney-disease"):
        p = profiles[pid]
        assert p.source is None
        assert p.missing_observations(NHANES_COLUMNS)[0] == p.observations[0]
        assert "no registered source" in p.notes.lower()


@pytest.mark.parametrize(
    "text",
    ["type 2 diabetes", "T2D", "Type-2 Diabetes Mellitus", "t2dm", "  TYPE II diabetes!! ",
     "diabetes mellitus type 2", "2000 patients with type 2 diabetes"],
)
def test_t2d_aliases_resolve(profiles, text):
    assert resolve_condition(text, profiles).id == "type-2-diabetes"


@pytest.mark.parametrize(
    ("text", "pid"),
    [("high blood pressure", "hypertension"), ("HTN", "hypertension"), ("CKD", "chronic-kidney-disease"),
     ("diabetic kidney disease", "chronic-kidney-disease"), ("congestive heart failure", "heart-failure"),
     ("HFrEF", "heart-failure"), ("C.O.P.D.", "copd"), ("Chronic Obstructive Pulmonary Disease", "copd")],
)
def test_other_aliases_resolve(profiles, text, pid):
    assert resolve_condition(text, profiles).id == pid


def test_short_aliases_match_only_exactly(profiles):
    assert resolve_condition("HF", profiles).id == "heart-failure"
    with pytest.raises(ProfileNotFound):
        resolve_condition("use meta-llama/Llama-2-7b-chat-hf please", profiles)


def test_unknown_condition_lists_valid_ones(profiles):
    with pytest.raises(ProfileNotFound) as info:
        resolve_condition("gout", profiles)
    assert isinstance(info.value, ValueError)
    for pid in EXPECTED_PROFILES:
        assert pid in str(info.value)
    with pytest.raises(ProfileNotFound):
        resolve_condition("  ", profiles)


def test_invalid_yaml_names_file_and_key(tmp_path):
    good = (KNOWLEDGE / "conditions" / "hypertension.yaml").read_text()
    (tmp_path / "hypertension.yaml").write_text(good.replace("unit: mmHg", "unit: mmHg\n    colour: red", 1))
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path)
    assert "hypertension.yaml" in str(info.value) and "colour" in str(info.value)

    (tmp_path / "hypertension.yaml").write_text("id: [unclosed\n")
    with pytest.raises(ProfileError, match="hypertension.yaml"):
        load_profiles(tmp_path)

    (tmp_path / "hypertension.yaml").write_text(good.replace("lower: 60", "lower: 300", 1))
    with pytest.raises(ProfileError, match=r"observations\.0"):
        load_profiles(tmp_path)


def test_models_forbid_extra_and_check_rules():
    with pytest.raises(ValueError):
        Threshold(label="x", op=">=", value=1, guideline="ada-standards-of-care", extra=1)
    with pytest.raises(ValueError):
        CohortRule(column="hba1c_pct")  # no condition
    with pytest.raises(ValueError):
        CohortRule(column="hba1c_pct", equals=1, min=2)  # two kinds
    assert CohortRule(column="egfr", below=60).matches(59.9)
    assert not CohortRule(column="egfr", below=60).matches(60)
    assert CohortRule(column="smoking_status", values=["current", "former"]).matches("Current")
    with pytest.raises(ValueError):
        Cohort()


# -- documents -----------------------------------------------------------------------------
def test_expected_documents_exist_with_valid_front_matter():
    for sub, ids in EXPECTED_DOCS.items():
        found = {p.stem for p in (KNOWLEDGE / sub).glob("*.md")}
        assert ids <= found, (sub, ids - found)
        for path in (KNOWLEDGE / sub).glob("*.md"):
            meta, body = parse_document(path)  # validates required keys and id == stem
            assert meta.id == path.stem
            assert meta.kind == KIND_OF_DIR[sub], path
            assert body.strip()
    assert document_ids() >= set().union(*EXPECTED_DOCS.values())


def test_guidelines_referenced_by_profiles_exist(profiles):
    guidelines = guideline_ids()
    all_docs = document_ids()
    for p in profiles.values():
        assert p.guideline in guidelines, (p.id, p.guideline)
        for g in p.related_guidelines:
            assert g in guidelines, (p.id, g)
        for g in p.guideline_ids():
            assert g in all_docs, (p.id, g)


_CITE = re.compile(r"\[S\d+")
_CITE_KEYS = re.compile(r"\[(S\d+)(?=[:\],;])|[,;]\s*(S\d+)(?=[:\],;])")
_SOURCE_LINE = re.compile(r"^\s*[-*]\s*\**\[?(S\d+)\b")


def _sections(body: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Split a body into (heading, lines) sections without code blocks; and the Sources lines."""
    sections: list[tuple[str, list[str]]] = []
    sources: list[str] = []
    in_code = in_sources = False
    for line in body.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if line.startswith("## "):
            in_sources = line[3:].strip().lower() == "sources"
            if not in_sources:
                sections.append((line[3:].strip(), []))
            continue
        if in_sources:
            sources.append(line)
        elif sections:
            sections[-1][1].append(line)
        elif line.strip() and not line.startswith("# "):
            sections.append(("(preamble)", [line]))
    return sections, sources


def _units(lines: list[str]) -> list[list[str]]:
    """Paragraphs; each list item and each table row is a unit of its own."""
    units: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#"):
            if current:
                units.append(current)
            current = []
            continue
        starts_item = bool(re.match(r"^([-*+]|\d+\.)\s", s)) or s.startswith("|")
        if starts_item and current:
            units.append(current)
            current = []
        current.append(s)
        if s.startswith("|"):
            units.append(current)
            current = []
    if current:
        units.append(current)
    return units


def _citation_problems(name: str, body: str) -> list[str]:
    """Every unit (paragraph, list item, table row) with a digit outside citations must cite [S..];
    every cited key must be listed under '## Sources'."""
    sections, sources = _sections(body)
    problems: list[str] = []
    if not sections:
        problems.append(f"{name}: no sections")
    if not sources:
        problems.append(f"{name}: needs a '## Sources' section at the end")
    listed = {m.group(1) for line in sources if (m := _SOURCE_LINE.match(line))}
    cited: set[str] = set()
    for heading, lines in sections:
        for unit in _units(lines):
            text = " ".join(unit)
            if re.fullmatch(r"\|?[\s\-:|]+\|?", text):  # table separator row
                continue
            bare = re.sub(r"\[S\d+[^\]]*\]", "", text)
            if any(ch.isdigit() for ch in bare) and not _CITE.search(text):
                problems.append(f"{name} / {heading}: number without [S..] citation: {text[:120]!r}")
            for m in _CITE_KEYS.finditer(text):
                cited.add(m.group(1) or m.group(2))
    if not cited:
        problems.append(f"{name}: cites nothing")
    if cited - listed:
        problems.append(f"{name}: cited but not in Sources: {sorted(cited - listed)}")
    return problems


def test_citation_checker_is_strict():
    good = "## A\n\nHbA1c of 6.5% or more [S11: ADA].\n\n- item 7% [S1]\n\n## Sources\n\n- S1 x\n- S11 y\n"
    assert _citation_problems("good", good) == []
    # a cited paragraph does not cover an uncited list item or table row next to it
    bad_item = "## A\n\nText [S1: x].\n- 38.4 million people\n\n## Sources\n\n- S1 x\n"
    assert any("without" in p for p in _citation_problems("bad", bad_item))
    bad_row = "## A\n\n| a | b |\n|---|---|\n| men | 12.6 |\n\n## Sources\n\n- S1 x\n"
    assert any("without" in p for p in _citation_problems("bad", bad_row))
    # a key that the Sources section does not list
    unlisted = "## A\n\nValue 5 [S9: y].\n\n## Sources\n\n- S1 x\n"
    assert any("not in Sources" in p for p in _citation_problems("bad", unlisted))
    # the digits inside a citation key do not count as a number
    assert _citation_problems("ok", "## A\n\nSee the report [S1].\n\n## Sources\n\n- S1 x\n") == []
    assert _citation_problems("none", "## A\n\nNo sources.\n")


@pytest.mark.parametrize("path", document_paths(KNOWLEDGE), ids=lambda p: p.name)
def test_every_number_carries_a_citation(path):
    _, body = parse_document(path)
    problems = _citation_problems(path.name, body)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", document_paths(KNOWLEDGE), ids=lambda p: p.name)
def test_sections_are_retrieval_sized(path):
    _, body = parse_document(path)
    sections, _ = _sections(body)
    for heading, lines in sections:
        words = len(" ".join(lines).split())
        assert 80 <= words <= 250, f"{path.name} / {heading}: {words} words (want 80-250)"


def test_document_sections_are_chunks_without_sources():
    path = KNOWLEDGE / "sources" / "nhanes.md"
    sections = document_sections(path)
    assert len(sections) >= 3
    assert all(h.lower() != "sources" and text for h, text in sections)
    assert any("NHANES" in h for h, _ in sections)
