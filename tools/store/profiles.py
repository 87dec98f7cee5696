"""Condition profiles and knowledge-document metadata.

A condition profile (``knowledge/conditions/<id>.yaml``) says what a condition is, which
guideline defines it, which registered data source holds a cohort of it, how that cohort is
selected (``cohort``), and which observations matter, ranked by clinical importance, with
LOINC code, unit, public physiological bounds, the harmonised source column (or ``null``
where no registered source has it) and guideline thresholds.

Cohort format (kept deliberately small)::

    cohort:
      description: plain words
      all_of:   [rule, ...]   # every rule must hold (e.g. the adult population)
      any_of:   [rule, ...]   # and, when present, at least one of these must hold
    rule: {column: NAME, equals: VALUE} | {column: NAME, values: [V, ...]}
          | {column: NAME, min: X, max: Y}   # inclusive bounds; either may be left out
          | {column: NAME, above: X, below: Y} # strict bounds (> X, < Y), e.g. eGFR below 60

Columns in cohort rules are the harmonised columns of the profile's ``source``; a profile
with ``source: null`` (no registered source has the condition) writes its rules over its own
observation names. A missing value never satisfies a rule.

Plain typed Python: no I/O at import time, no LangChain.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthehr.errors import ToolInputError

__all__ = [
    "DOCUMENT_KINDS",
    "Cohort",
    "CohortRule",
    "ConditionProfile",
    "DocumentMeta",
    "Observation",
    "ProfileError",
    "ProfileNotFound",
    "Threshold",
    "document_ids",
    "document_paths",
    "document_sections",
    "guideline_ids",
    "knowledge_root",
    "load_profiles",
    "normalize_text",
    "parse_document",
    "resolve_condition",
]

DOCUMENT_KINDS: tuple[str, ...] = ("source", "guideline", "method")
_DOCUMENT_DIRS: tuple[str, ...] = ("sources", "guidelines", "methods")

_KEBAB = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
_SNAKE = r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$"
_LOINC = r"^[0-9]{1,6}-[0-9]$"

Scalar = bool | int | float | str


class ProfileError(ValueError):
    """A condition profile or knowledge document is invalid; names the file and the key."""

    def __init__(self, file: str | Path, key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: key '{key}': {problem}")


class ProfileNotFound(ToolInputError):
    """No condition profile matches the text; the message lists the supported conditions and, for a
    real condition the sources cannot identify (type 1 diabetes), says why."""

    def __init__(self, text: str, valid: Iterable[str], reason: str | None = None) -> None:
        self.text = text
        self.valid = sorted(valid)
        self.reason = reason
        listed = ", ".join(self.valid) if self.valid else "(none loaded)"
        head = reason if reason else f"unknown condition {text!r}"
        super().__init__(f"{head}; valid conditions: {listed}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    """A guideline-defined cut point on one observation, e.g. HbA1c >= 6.5 % (diagnosis)."""

    label: str = Field(min_length=1)
    op: Literal[">=", ">", "<=", "<", "=="]
    value: float
    guideline: str = Field(pattern=_KEBAB, description="id of the knowledge document that defines it")

    def applies(self, value: float | None) -> bool:
        """True when ``value`` meets the threshold; a missing value never does."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        v = float(value)
        return {
            ">=": v >= self.value,
            ">": v > self.value,
            "<=": v <= self.value,
            "<": v < self.value,
            "==": v == self.value,
        }[self.op]


class CohortRule(_Strict):
    """One condition on one column: ``equals``, ``values`` (one of), or a range.

    Range bounds: ``min``/``max`` are inclusive (>=, <=); ``above``/``below`` are strict (>, <).
    """

    column: str = Field(pattern=_SNAKE)
    equals: Scalar | None = None
    values: list[Scalar] | None = None
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> CohortRule:
        ranged = any(b is not None for b in (self.min, self.max, self.above, self.below))
        kinds = [self.equals is not None, self.values is not None, ranged]
        if sum(kinds) != 1:
            raise ValueError("a cohort rule needs exactly one of: equals, values, or min/max/above/below")
        if self.values is not None and not self.values:
            raise ValueError("'values' must not be empty")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self

    def matches(self, value: Any) -> bool:
        """Whether ``value`` satisfies the rule; a missing value (None/NaN) never does."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.equals is not None:
            return _same(value, self.equals)
        if self.values is not None:
            return any(_same(value, v) for v in self.values)
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        if self.min is not None and v < self.min:
            return False
        if self.max is not None and v > self.max:
            return False
        if self.above is not None and v <= self.above:
            return False
        return not (self.below is not None and v >= self.below)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a).strip().lower() == str(b).strip().lower()
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


class Cohort(_Strict):
    """Machine-readable cohort definition: all of ``all_of`` and (if given) any of ``any_of``."""

    description: str = ""
    all_of: list[CohortRule] = Field(default_factory=list)
    any_of: list[CohortRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> Cohort:
        if not self.all_of and not self.any_of:
            raise ValueError("a cohort needs at least one rule in all_of or any_of")
        return self

    def columns(self) -> set[str]:
        return {r.column for r in (*self.all_of, *self.any_of)}

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether one record (a mapping column -> value) belongs to the cohort."""
        if not all(r.matches(record.get(r.column)) for r in self.all_of):
            return False
        return not self.any_of or any(r.matches(record.get(r.column)) for r in self.any_of)


class Observation(_Strict):
    """One observation of a profile. Bounds are public physiological limits, never data."""

    name: str = Field(pattern=_SNAKE)
    label: str = Field(min_length=1)
    unit: str = Field(min_length=1)
    value_type: Literal["continuous", "integer", "binary", "categorical"] = "continuous"
    loinc: str | None = Field(default=None, pattern=_LOINC)
    loinc_uncertain: bool = False
    lower: float | None = None
    upper: float | None = None
    categories: list[str] | None = None
    source_column: str | None = Field(default=None, pattern=_SNAKE)
    derived_from: str | None = None
    thresholds: list[Threshold] = Field(default_factory=list)
    note: str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Observation:
        if self.value_type == "categorical":
            if not self.categories:
                raise ValueError(f"categorical observation '{self.name}' needs 'categories'")
            if self.lower is not None or self.upper is not None:
                raise ValueError(f"categorical observation '{self.name}' takes no lower/upper")
        else:
            if self.lower is None or self.upper is None:
                raise ValueError(f"observation '{self.name}' needs numeric 'lower' and 'upper' bounds")
            if not self.lower < self.upper:
                raise ValueError(f"observation '{self.name}': lower ({self.lower}) must be < upper ({self.upper})")
            if self.value_type == "binary" and (self.lower, self.upper) != (0, 1):
                raise ValueError(f"binary observation '{self.name}' must have bounds 0 and 1")
            if self.categories is not None:
                raise ValueError(f"only categorical observations take 'categories' ('{self.name}')")
        if self.loinc is None and self.loinc_uncertain:
            raise ValueError(f"observation '{self.name}': loinc_uncertain set but loinc is null")
        return self

    @property
    def numeric(self) -> bool:
        return self.value_type != "categorical"

    def in_bounds(self, value: float) -> bool:
        return self.lower is not None and self.upper is not None and self.lower <= value <= self.upper


class ConditionProfile(_Strict):
    """A condition: definition, guideline, default source, cohort rules, ranked observations."""

    id: str = Field(pattern=_KEBAB)
    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    definition: str = Field(min_length=1)
    guideline: str = Field(pattern=_KEBAB)
    related_guidelines: list[str] = Field(default_factory=list)
    source: str | None = Field(default=None, pattern=_KEBAB)
    population: str = ""
    cohort: Cohort
    notes: str = ""
    observations: list[Observation] = Field(min_length=1, description="ranked, most important first")

    @field_validator("related_guidelines")
    @classmethod
    def _kebab_ids(cls, v: list[str]) -> list[str]:
        for g in v:
            if not re.match(_KEBAB, g):
                raise ValueError(f"guideline id {g!r} is not kebab-case")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ConditionProfile:
        names = [o.name for o in self.observations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate observation names: {dupes}")
        if self.source is None:
            unknown = self.cohort.columns() - set(names)
            if unknown:
                raise ValueError(
                    f"with source null, cohort rules must use observation names; unknown: {sorted(unknown)}"
                )
        return self

    # -- helpers the tools use -------------------------------------------------------------
    def observation(self, name: str) -> Observation:
        for o in self.observations:
            if o.name == name:
                return o
        raise KeyError(f"{self.id} has no observation {name!r}")

    def top_observations(self, k: int) -> list[Observation]:
        """The ``k`` most important observations (ranked order), whether or not a source has them."""
        if k < 0:
            raise ValueError("k must be >= 0")
        return list(self.observations[:k])

    def available_observations(self, columns: Iterable[str]) -> list[Observation]:
        """Observations (ranked order) whose ``source_column`` is among ``columns``."""
        cols = set(columns)
        return [o for o in self.observations if o.source_column is not None and o.source_column in cols]

    def missing_observations(self, columns: Iterable[str]) -> list[Observation]:
        """Observations (ranked order) that no column in ``columns`` provides."""
        cols = set(columns)
        return [o for o in self.observations if o.source_column is None or o.source_column not in cols]

    def source_columns(self) -> set[str]:
        """Every source column the profile maps to."""
        return {o.source_column for o in self.observations if o.source_column}

    def guideline_ids(self) -> set[str]:
        """The main guideline, related guidelines and every guideline named by a threshold."""
        ids = {self.guideline, *self.related_guidelines}
        for o in self.observations:
            ids.update(t.guideline for t in o.thresholds)
        return ids

    def names(self) -> list[str]:
        """Id, name and aliases: every phrasing that resolves to this profile."""
        return [self.id, self.name, *self.aliases]


class DocumentMeta(_Strict):
    """Front matter of a knowledge document (knowledge/sources|guidelines|methods/*.md)."""

    id: str = Field(pattern=_KEBAB)
    title: str = Field(min_length=1)
    publisher: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    licence: str = Field(min_length=1)
    year: int = Field(ge=1900, le=2100)
    kind: Literal["source", "guideline", "method"]


# -- locations ------------------------------------------------------------------------------
def knowledge_root() -> Traversable:
    """The packaged ``knowledge`` directory (works from a checkout or an installed wheel)."""
    return resources.files("synthehr.knowledge")


def _as_dir(directory: Path | Traversable | None, sub: str) -> Path | Traversable:
    return knowledge_root() / sub if directory is None else directory


# -- profiles -------------------------------------------------------------------------------
def _error_key(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return key, first["msg"]


def _load_one(entry: Path | Traversable) -> ConditionProfile:
    try:
        data = yaml.safe_load(entry.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProfileError(entry.name, "(yaml)", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(entry.name, "(top level)", "expected a mapping")
    try:
        profile = ConditionProfile.model_validate(data)
    except ValidationError as exc:
        key, msg = _error_key(exc)
        raise ProfileError(entry.name, key, msg) from exc
    stem = entry.name.rsplit(".", 1)[0]
    if profile.id != stem:
        raise ProfileError(entry.name, "id", f"id {profile.id!r} must equal the file stem {stem!r}")
    return profile


def load_profiles(directory: Path | None = None) -> dict[str, ConditionProfile]:
    """Load every ``*.yaml``/``*.yml`` profile; default: the packaged knowledge/conditions.

    Raises ProfileError (file and key) on invalid YAML, an invalid profile, or an alias that
    two profiles share.
    """
    root = _as_dir(directory, "conditions")
    entries = sorted(
        (e for e in root.iterdir() if e.is_file() and e.name.endswith((".yaml", ".yml"))),
        key=lambda e: e.name,
    )
    profiles: dict[str, ConditionProfile] = {}
    seen: dict[str, str] = {}
    for entry in entries:
        profile = _load_one(entry)
        for phrase in profile.names():
            norm = normalize_text(phrase)
            if norm in seen and seen[norm] != profile.id:
                raise ProfileError(entry.name, "aliases", f"{phrase!r} already names {seen[norm]!r}")
            seen[norm] = profile.id
        profiles[profile.id] = profile
    return profiles


def normalize_text(text: str) -> str:
    """Lower case, punctuation to spaces, collapsed whitespace: "Type-2  Diabetes!" -> "type 2 diabetes"."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


# Real conditions the sources cannot identify, checked before any partial match so that "type 1
# diabetes" never resolves to the type 2 profile through its alias "diabetes". Patterns run on
# normalize_text output.
_T1 = (r"(?:\btype (?:1|i|one)\b|\bt1\b)(?: \w+)? (?:diabetes|diabetic|diabetics|dm)\b|\bt1dm?\b|\biddm\b|"
       r"\binsulin dependent diabetes\b|\bjuvenile(?: onset)? diabetes\b|\bdiabetes(?: mellitus)? type (?:1|i|one)\b|"
       r"\bdm ?(?:type )?(?:1|i)\b|\bautoimmune diabetes\b|\blada\b")
UNSUPPORTED_CONDITIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(_T1),
     "cannot generate type 1 diabetes: NHANES records a doctor's diagnosis of diabetes and HbA1c, not the type of "
     "diabetes, so type 1 (about 5 % of diabetes in the US) cannot be told apart from type 2; the type-2-diabetes "
     "cohort is adults with diabetes of any type, 90-95 % of them type 2"),
    (re.compile(r"\bgestational\b|\bgdm\b|\bdiabet\w* (?:in|during|of) pregnancy\b|\bpregnancy diabet"),
     "cannot generate gestational diabetes: no registered source identifies diabetes in pregnancy"),
    (re.compile(r"\bpre ?diabet\w*|\bimpaired (?:fasting glucose|glucose tolerance)\b"),
     "cannot generate prediabetes: it is not one of the supported condition profiles"),
    (re.compile(r"\btype (?!(?:2|ii|two)\b)(?:\d+|[ivx]+|[a-z]+) (?:diabetes|diabetic|diabetics|dm)\b|"
                r"\bdiabetes(?: mellitus)? type (?!(?:2|ii|two)\b)\w+\b|\bmody\b|\bmonogenic diabetes\b"),
     "this type of diabetes is not supported (only type 2 diabetes has a profile)"),
)
_NEGATIONS = frozenset({"no", "non", "not", "without", "never", "free", "absent", "absence", "negative", "except",
                        "excluding", "exclude", "nondiabetic", "healthy"})
# Words a strict condition argument may carry around the condition's name ("type 2 diabetes patients").
_FILLER = frozenset({"a", "an", "the", "of", "with", "and", "for", "having", "who", "have", "has", "had",
                     "patient", "patients", "people", "persons", "person", "adult", "adults", "individuals",
                     "cohort", "cohorts", "record", "records", "ehr", "ehrs", "data", "synthetic", "cases",
                     "subjects", "population", "diagnosed", "diagnosis", "condition", "disease", "us", "known"})


def _unsupported(norm: str) -> str | None:
    for pattern, reason in UNSUPPORTED_CONDITIONS:
        if pattern.search(norm):
            return reason
    return None


def resolve_condition(text: str, profiles: Mapping[str, ConditionProfile] | None = None, *,
                      strict: bool = False) -> ConditionProfile:
    """Find the profile that ``text`` names: id, name or alias, case- and punctuation-insensitive.

    Resolves exactly or not at all. A real condition no source can identify ("type 1 diabetes",
    "gestational diabetes", "type 7 diabetes") is refused with the reason, even though it contains
    an alias ("diabetes") of a supported profile; a negated mention ("no diabetes") never counts.
    Otherwise a phrase of 3+ characters inside ``text`` is found, longest first ("500 patients with
    type 2 diabetes"). With ``strict`` (a tool's condition argument) the words around that phrase
    must be fillers such as "patients" or "with". Raises ProfileNotFound listing the valid ids.
    """
    if profiles is None:
        profiles = load_profiles()
    norm = normalize_text(text or "")
    if not norm:
        raise ProfileNotFound(text, profiles.keys(), "no condition given")
    squashed = norm.replace(" ", "")
    for profile in profiles.values():
        for phrase in profile.names():
            p = normalize_text(phrase)
            if norm == p or squashed == p.replace(" ", ""):
                return profile
    reason = _unsupported(norm)
    if reason is not None:
        raise ProfileNotFound(text, profiles.keys(), f"{reason} (asked for {text.strip()!r})")
    words = norm.split()
    best: tuple[int, ConditionProfile, int, int] | None = None
    negated = False
    for profile in profiles.values():
        for phrase in profile.names():
            pw = normalize_text(phrase).split()
            if len(" ".join(pw)) < 3:
                continue
            for i in range(len(words) - len(pw) + 1):
                if words[i:i + len(pw)] != pw:
                    continue
                before = words[max(0, i - 2):i]
                if any(w in _NEGATIONS for w in before) or (before and before[-1] in {"of"} and
                                                            any(w in _NEGATIONS for w in words[max(0, i - 3):i])):
                    negated = True
                    continue
                size = len(" ".join(pw))
                if best is None or size > best[0]:
                    best = (size, profile, i, i + len(pw))
    if best is not None:
        _, profile, i, j = best
        rest = [w for w in words[:i] + words[j:] if w not in _FILLER]
        if not strict or not rest:
            return profile
        raise ProfileNotFound(text, profiles.keys(),
                              f"cannot read the condition {text.strip()!r} exactly (it names {profile.id} plus "
                              f"{' '.join(rest)!r}); give just the condition, and filters or shares separately")
    if negated:
        raise ProfileNotFound(text, profiles.keys(),
                              f"{text.strip()!r} asks for people without a condition; a cohort is generated for a "
                              "supported condition")
    raise ProfileNotFound(text, profiles.keys())


# -- knowledge documents -------------------------------------------------------------------
_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)


def parse_document(path: Path | Traversable) -> tuple[DocumentMeta, str]:
    """Read one Markdown document: validated front matter and the body after it."""
    text = path.read_text(encoding="utf-8")
    m = _FRONT.match(text)
    if not m:
        raise ProfileError(path.name, "(front matter)", "missing '---' YAML front matter")
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        raise ProfileError(path.name, "(front matter)", f"not valid YAML: {exc}") from exc
    try:
        meta = DocumentMeta.model_validate(data)
    except ValidationError as exc:
        key, msg = _error_key(exc)
        raise ProfileError(path.name, key, msg) from exc
    stem = path.name.rsplit(".", 1)[0]
    if meta.id != stem:
        raise ProfileError(path.name, "id", f"id {meta.id!r} must equal the file stem {stem!r}")
    return meta, text[m.end():]


def document_paths(root: Path | None = None) -> list[Path | Traversable]:
    """Every knowledge document (sources, guidelines, methods), sorted by folder and name."""
    base: Path | Traversable = knowledge_root() if root is None else root
    out: list[Path | Traversable] = []
    for sub in _DOCUMENT_DIRS:
        d = base / sub
        if d.is_dir():
            out.extend(sorted((e for e in d.iterdir() if e.name.endswith(".md")), key=lambda e: e.name))
    return out


def document_ids(root: Path | None = None, kind: str | None = None) -> set[str]:
    """Ids of the knowledge documents, optionally only one kind (source|guideline|method)."""
    if kind is not None and kind not in DOCUMENT_KINDS:
        raise ValueError(f"kind must be one of {DOCUMENT_KINDS}")
    ids: set[str] = set()
    for p in document_paths(root):
        meta, _ = parse_document(p)
        if kind is None or meta.kind == kind:
            ids.add(meta.id)
    return ids


def guideline_ids(root: Path | None = None) -> set[str]:
    """Ids of the guideline documents (knowledge/guidelines)."""
    return document_ids(root, kind="guideline")


def document_sections(path: Path | Traversable) -> list[tuple[str, str]]:
    """The ``## `` sections of a document as (heading, text), without the Sources section.

    Each section is written to be read alone (one retrieval chunk); code fences are kept.
    """
    _, body = parse_document(path)
    sections: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif sections:
            sections[-1][1].append(line)
    return [(h, "\n".join(lines).strip()) for h, lines in sections if h.strip().lower() != "sources"]
