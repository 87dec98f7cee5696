"""Grounding: the numbers, condition and filters the user wrote win over what the model invented.

A small model fills a tool's JSON arguments badly: it copies numbers from the few-shot examples,
invents an epsilon or a seed, or names a condition nobody asked for. `extract_facts` reads the
user's own words (and, for follow-ups such as "make them older", the session's last cohort);
`ground_args` then rewrites the model's arguments for the chosen tool:

- a number of records, an observation count or an epsilon the user wrote replaces the model's;
  one the model invented (not in the user's words) is replaced by the session's value for a
  follow-up or dropped so that the tool's default applies;
- the condition must resolve to a condition profile (the user's words first, then the session's
  last cohort, then the model's value); otherwise a corrective error lists the valid conditions;
- a data-set reference the user did not write becomes "last";
- age and sex filters in the user's words ("older than 65", "only women", "make them older")
  are set on whatever filter fields the tool's args model has.

`check_limits` declines requests above settings.generation.max_rows or
settings.privacy.max_epsilon_per_request, and `check_request` declines unsafe or out-of-scope
requests (real patient rows, deleting or reading files, running code) before any tool runs.

Fields are matched by role (name synonyms and types), so the agent works with whatever
tools are registered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.base import SessionState, ToolSpec
    from synthehr.configs.settings import Settings


class Decline(Exception):
    """The request must be declined; the message is the answer to the user (it names the limit)."""


# ---- roles of argument fields ----------------------------------------------------------------
ROLE_NAMES: dict[str, set[str]] = {
    "n": {"n", "n_rows", "rows", "num_rows", "count", "n_patients", "num_patients", "patients", "size",
          "records", "n_records", "num_records", "sample_size"},
    "n_obs": {"n_observations", "observations", "num_observations", "observation_count", "n_obs",
              "n_features", "top_observations", "top_k", "k_observations"},
    "epsilon": {"epsilon", "target_epsilon", "eps"},
    "delta": {"delta", "target_delta"},
    "seed": {"seed", "random_seed"},
    "condition": {"condition", "disease", "diagnosis", "condition_id"},
    "population": {"population", "country", "region"},
    "dataset": {"dataset", "dataset_id", "data_set"},
    "question": {"question", "query"},
    "filters": {"filters", "filter", "where", "cohort_filters"},
    "age_min": {"age_min", "min_age", "age_from", "minimum_age"},
    "age_max": {"age_max", "max_age", "age_to", "maximum_age"},
    "sex": {"sex", "gender"},
    "source": {"source", "data_source"},
    "columns": {"columns", "observations_to_summarise", "variables"},
    "by": {"by", "group_by", "groupby"},
    "thresholds": {"thresholds"},
    "correlation": {"correlation"},
    "plot": {"plot", "plots"},
    "proportions": {"proportions", "shares"},
}


def field_role(name: str) -> str | None:
    """The role a field NAME usually has (for evaluation cases and tools that declare no roles)."""
    for role, names in ROLE_NAMES.items():
        if name in names:
            return role
    return None


def model_roles(model: type[BaseModel]) -> dict[str, str]:
    """{field: role} of an args model. The roles its fields declare (`Field(json_schema_extra={"role": ...})`)
    are authoritative; a model that declares none (a third-party tool) is read by field names."""
    from synthehr.tools.base import arg_roles

    declared = arg_roles(model)
    if declared:
        return declared
    return {k: r for k in model.model_fields if (r := field_role(k))}


# ---- facts from the user's words --------------------------------------------------------------
_WORD_NUM = {
    "a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "dozen": 12,
}
_MULT = {"k": 1_000, "thousand": 1_000, "m": 1_000_000, "mio": 1_000_000, "million": 1_000_000,
         "millions": 1_000_000, "billion": 1_000_000_000, "bn": 1_000_000_000, "hundred": 100, "thousands": 1_000}
_NUM = r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s*(k|thousand|thousands|m|mio|million|millions|billion|bn|hundred)\b)?"
_PATIENT_NOUN = (r"(?:patients?|records?|rows?|people|persons?|individuals?|subjects?|samples?|participants?|"
                 r"cases?|adults?|women|men|females?|males?|ehrs?|entries|synthetic|profiles?|members?|"
                 r"diabetics?|smokers?|elderly|seniors?|pts|of them)")
_OBS_NOUN = (r"(?:observations?|variables?|features?|measurements?|labs?|lab values?|columns?|fields?|attributes?|"
             r"parameters?|vitals?|markers?|biomarkers?|indicators?|characteristics?|clinical values?|data points?|items?)")
_EPS = re.compile(r"(?:epsilon|ε|eps|privacy budget|privacy loss|privacy level)\s*(?:\(ε\)\s*)?(?:of|=|:|is|at|to|==|<=|≤|=<|\s)\s*"
                  r"(\d+(?:\.\d+)?|\.\d+)", re.I)
_SEED = re.compile(r"\bseed\s*(?:of|=|:|is)?\s*(\d+)", re.I)
_DATASET_ID = re.compile(r"\b(?:ds|dataset|data)-\d{8}-\d{6}-[0-9a-f]{6}\b|\b[a-z][a-z0-9]*-\d{8}-\d{6}-[0-9a-f]{6}\b", re.I)
# "US", "U.S.", "USA", "us adults", "American ...": a population with public targets (issue 15). Not the
# pronoun "us" ("give us 500 patients"), and not "NHANES" (a source: its cohorts mirror the sample).
_US = re.compile(r"\bU\.?S\.?A?\b|\bu\.s\.(?:a\.)?|(?i:\bus\s+(?:population|adults?|patients|people|residents)\b)"
                 r"|(?i:\b(?:united states|america|american|americans)\b)")
# Any other named population ("based on the Brazilian population"): passed on so the tool can say which
# populations it has figures for, instead of the request silently mirroring the source sample.
_NAMED_POPULATION = re.compile(r"\b(?:based on|from|representative of|matching|reflecting|like)\s+(?:the\s+)?"
                               r"(?!(?:Hispanic|Latino|Latina|Black|White|Asian|Mexican|Native|Older|Elderly|Young|Diabetic)\b)"
                               r"([A-Z][a-z]+(?:\s[A-Z][a-z]+)?)\s+(?:general\s+)?(?:population|adults|people|patients)\b")
_FEMALE = re.compile(r"\b(?:women|woman|female|females|ladies|girls)\b", re.I)
_MALE = re.compile(r"\b(?:men|man|male|males|gentlemen|boys)\b", re.I)
_OLDER = re.compile(r"\b(?:older|elderly|seniors?|aged? (?:population|people)|geriatric)\b", re.I)
_YOUNGER = re.compile(r"\b(?:younger|young adults?|young people)\b", re.I)
_AGE_MIN = re.compile(
    r"(?:(?:older than|over|above|at least|aged|age|ages|>=?|≥)\s*(\d{1,3})\s*(?:\+|years?|yrs?|y/?o)?(?!\s*(?:-|to|and)\s*\d))"
    r"|(?:(\d{1,3})\s*(?:\+|years? and (?:older|over|above)|and (?:older|over|above)|or older))", re.I)
_AGE_MAX = re.compile(r"(?:younger than|under|below|at most|<=?|≤)\s*(\d{1,3})\s*(?:years?|yrs?)?", re.I)
_AGE_RANGE = re.compile(r"(?:aged?|ages|between)\s*(\d{1,3})\s*(?:-|–|to|and)\s*(\d{1,3})", re.I)
_FOLLOW_UP = re.compile(r"\b(?:them|they|their|those|these|that|same|again|instead|this cohort|that cohort|the cohort|"
                        r"the data|this data|that data|only|more|fewer|older|younger|it)\b", re.I)


_REFERS_TO_DATA = re.compile(r"\b(?:this|these|that|those|them|their|it|its|the data|data ?set|cohort|generated|"
                             r"synthetic|last|just made|you made|records|patients)\b", re.I)
_GROUPS = {
    "sex": re.compile(r"\bby (?:sex|gender)\b|\b(?:men|males?) (?:and|vs\.?|versus) (?:women|females?)\b|"
                      r"\b(?:women|females?) (?:and|vs\.?|versus) (?:men|males?)\b|\bper sex\b", re.I),
    "age_band": re.compile(r"\bby age(?: band| group)?s?\b|\bper age\b|\bage bands?\b|\bage groups?\b", re.I),
    "race_ethnicity": re.compile(r"\bby (?:race|ethnicity)\b|\brace/ethnicity\b", re.I),
}
_REQUEST_WORDS = {
    "thresholds": re.compile(r"(?:>=?|<=?|≥|≤|above|below|over|under|at least|threshold|cut-?off|share|proportion|"
                             r"percent|how many|uncontrolled|controlled|target)", re.I),
    "correlation": re.compile(r"correlat|relationship|associated|association|related", re.I),
    "plot": re.compile(r"plot|chart|graph|histogram|figure|visuali|heatmap|scatter|draw|picture", re.I),
}
_OBS_SYNONYMS = {
    "hba1c": ["a1c", "hba1c", "hb a1c", "glycated", "glycohemoglobin", "glycohaemoglobin", "haemoglobin a1c",
              "hemoglobin a1c"],
    "bmi": ["bmi", "body mass index"],
    "systolic": ["systolic", "sbp"],
    "diastolic": ["diastolic", "dbp"],
    "age": ["age", "ages", "how old"],
    "waist": ["waist"],
    "hdl": ["hdl"],
    "cholesterol": ["total cholesterol", "cholesterol"],
    "weight": ["weight"],
    "height": ["height"],
    "pulse": ["pulse", "heart rate"],
}


def observation_columns(text: str, profiles: dict[str, Any] | None) -> list[str]:
    """Source columns of the observations the user names ("mean HbA1c and BMI" -> hba1c_pct, bmi_kg_m2)."""
    low = " " + re.sub(r"[^0-9a-z]+", " ", text.lower()) + " "
    cols: list[str] = []
    seen_obs: list[tuple[str, str]] = []
    for profile in (profiles or {}).values():
        for obs in profile.observations:
            if obs.source_column:
                seen_obs.append((obs.name, obs.source_column))
                seen_obs.append((obs.label.lower(), obs.source_column))
    if "blood pressure" in low or " bp " in low:
        for name, col in seen_obs:
            if ("systolic" in name or "diastolic" in name) and col not in cols:
                cols.append(col)
    for key, syns in _OBS_SYNONYMS.items():
        if any(f" {s} " in low for s in syns):
            for name, col in seen_obs:
                if key in name.replace("_", " ") or key in col:
                    if col not in cols and not (key == "age" and "band" in col):
                        cols.append(col)
                    break
    return cols


_ACTION_VERB = re.compile(r"\b(?:generate|create|train|make|simulate|synthesi[sz]e|produce|build|sample|fit|use|"
                          r"give me|need|want|with)\b", re.I)


@dataclass
class Facts:
    """What the user's own words say (None: not said)."""

    text: str
    n: int | None = None
    n_obs: int | None = None
    epsilon: float | None = None
    seed: int | None = None
    condition: Any = None  # a ConditionProfile
    condition_phrase: str | None = None
    population: str | None = None
    dataset: str | None = None
    sex: str | None = None
    age_min: int | None = None
    age_max: int | None = None
    older: bool = False
    younger: bool = False
    follow_up: bool = False
    numbers: set[float] = field(default_factory=set)
    # Clinical attributes of a generation request: filter rules on source columns ("insulin_now=1", with the
    # user's phrase), and attributes no source records (named in the answer, never silently dropped).
    attributes: list[tuple[str, str]] = field(default_factory=list)
    unmet: list[str] = field(default_factory=list)

    def filters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.age_min is not None:
            out["age_min"] = self.age_min
        if self.age_max is not None:
            out["age_max"] = self.age_max
        if self.sex:
            out["sex"] = self.sex
        return out


def _to_number(num: str, mult: str | None) -> float:
    value = float(num.replace(",", ""))
    if mult:
        value *= _MULT[mult.lower()]
    return value


def _words_to_numbers(text: str) -> str:
    """'two thousand' -> '2000', 'ten million' -> '10 million', 'a thousand' -> '1000'."""
    def repl(m: re.Match[str]) -> str:
        a = _WORD_NUM[m.group(1).lower()]
        b = m.group(2).lower()
        if b in ("hundred",):
            return str(a * 100)
        if b in ("thousand",):
            return str(a * 1000)
        return f"{a} {b}"

    text = re.sub(r"\b(a|one|two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|thirty|forty|fifty|"
                  r"sixty|seventy|eighty|ninety)\s+(hundred|thousand|million|billion)\b", repl, text, flags=re.I)
    text = re.sub(r"\b(two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|thirty|forty|fifty)\b"
                  r"(?=\s+(?:important\s+|key\s+|main\s+|diabetes\s+|clinical\s+)?" + _OBS_NOUN + ")",
                  lambda m: str(_WORD_NUM[m.group(1).lower()]), text, flags=re.I)
    return text


def extract_facts(text: str, profiles: dict[str, Any] | None = None) -> Facts:
    """Read counts, epsilon, condition, population, data-set id and age/sex filters from the user's text."""
    facts = Facts(text=text)
    t = _words_to_numbers(text)
    low = t.lower()
    unassigned: list[int] = []  # whole numbers >= 10 that no pattern claimed
    # Numbers followed (within a few words) by a patient noun: the number of records.
    for m in re.finditer(_NUM, t, re.I):
        value = _to_number(m.group(1), m.group(2))
        facts.numbers.add(value)
        before = low[max(0, m.start() - 12):m.start()]
        if re.search(r"(?:type|stage|grade|class|gold|nyha|version|top|first|ε|epsilon|eps|seed|age|aged|over|under|"
                     r"than|least|most|above|below)\s*$", before):
            continue
        after = low[m.end():m.end() + 60]
        if re.match(r"\s*(?:%|percent|years?|yrs?|y/?o|\+|mg|mmhg|kg|cm)", after):
            continue
        if re.match(r"\s*(?:\w+[\s-]+){0,2}" + _OBS_NOUN, after):
            if facts.n_obs is None and value == int(value):
                facts.n_obs = int(value)
            continue
        if facts.n is None and re.match(r"\s*(?:[\w'-]+\s+){0,5}(?:[a-z]+-)?" + _PATIENT_NOUN + r"\b", after):
            facts.n = int(value)
        elif (value == int(value) and value >= 10 and not re.match(r"\s*(?:or|to|and|-|–|/)\s*\d", after)
              and not re.search(r"(?:to|and|-|–|/|between|from)\s*$", before)):
            unassigned.append(int(value))
    m = re.search(r"\b(?:n\s*[=:]?|x|×|n of|sample size(?: of)?|cohort size(?: of)?|size of|number of (?:patients|records|rows)"
                  r"(?: of| to| =| is)?)\s*" + _NUM, t, re.I)
    if m and facts.n is None:
        facts.n = int(_to_number(m.group(1), m.group(2)))
    m = re.search(r"\b(?:top|first)\s+(\d+)\b", t, re.I)
    if m and facts.n_obs is None:
        facts.n_obs = int(m.group(1))
    # "Produce a cohort of 4000 hypertensive Americans": a generation request with one unclaimed whole number.
    rest = [v for v in unassigned if v != facts.n_obs]
    if facts.n is None and len(rest) == 1 and _GENERATE_VERB.search(t) and not _THRESHOLD.search(t):
        facts.n = rest[0]
    m = _EPS.search(t)
    if m:
        facts.epsilon = float(m.group(1))
    m = _SEED.search(t)
    if m:
        facts.seed = int(m.group(1))
    m = _DATASET_ID.search(t)
    if m:
        facts.dataset = m.group(0)
    if _US.search(t):
        facts.population = "US"
    elif (m := _NAMED_POPULATION.search(t)) is not None:
        facts.population = m.group(1)
    # Condition: the profile named in the user's words.
    if profiles is None:
        profiles = _profiles()
    if profiles:
        try:
            from synthehr.tools.store.profiles import resolve_condition

            profile = resolve_condition(text, profiles)
            facts.condition = profile
            facts.condition_phrase = profile.name
        except (ValueError, ImportError):
            profile = _fuzzy_condition(text, profiles)
            if profile is not None:
                facts.condition = profile
                facts.condition_phrase = profile.name
    # Filters.
    fem, male = bool(_FEMALE.search(t)), bool(_MALE.search(t))
    if fem != male:
        facts.sex = "female" if fem else "male"
    facts.attributes, facts.unmet = clinical_attributes(t)
    t = UNMEASURED.sub(" ", _THRESHOLD.sub(" ", t))  # "HbA1c above 9" and "CKD stage 3" are not ages
    m = _AGE_RANGE.search(t)
    if m:
        lo, hi = sorted((int(m.group(1)), int(m.group(2))))
        facts.age_min, facts.age_max = lo, hi
    else:
        m = _AGE_MIN.search(t)
        if m:
            facts.age_min = int(m.group(1) or m.group(2))
        m = _AGE_MAX.search(t)
        if m:
            facts.age_max = int(m.group(1))
    facts.older = bool(_OLDER.search(t)) and facts.age_min is None
    facts.younger = bool(_YOUNGER.search(t)) and facts.age_max is None
    facts.follow_up = bool(_FOLLOW_UP.search(t))
    return facts


def _fuzzy_condition(text: str, profiles: dict[str, Any]) -> Any:
    """The profile a misspelt condition names ("hypertention", "diabtes"): a close match (difflib ratio >= 0.85)
    of a word or two-word phrase of the request to a profile's name or alias of at least 6 letters."""
    import difflib

    names: dict[str, Any] = {}
    for p in profiles.values():
        for alias in [p.name, *p.aliases]:
            a = " ".join(re.findall(r"[a-z0-9]+", alias.lower()))
            if len(a) >= 6:
                names[a] = p
    words = re.findall(r"[a-z0-9]+", text.lower())
    grams = words + [" ".join(words[i:i + 2]) for i in range(len(words) - 1)] + \
        [" ".join(words[i:i + 3]) for i in range(len(words) - 2)]
    best: tuple[float, Any] = (0.0, None)
    for g in grams:
        if len(g) < 6:
            continue
        for a, p in names.items():
            r = difflib.SequenceMatcher(None, g, a).ratio()
            if r > best[0]:
                best = (r, p)
    return best[1] if best[0] >= 0.9 else None


_GENERATE_VERB = re.compile(r"\b(?:generate|create|simulate|synthesi[sz]e|produce|build|make|sample)\b|\bcohort of\b",
                            re.I)
_PROFILES_CACHE: dict[str, Any] = {}


def _profiles() -> dict[str, Any]:
    if "p" not in _PROFILES_CACHE:
        try:
            from synthehr.tools.store.profiles import load_profiles

            _PROFILES_CACHE["p"] = load_profiles()
        except Exception:  # noqa: BLE001 - profiles missing or invalid: grounding works without them
            _PROFILES_CACHE["p"] = {}
    return _PROFILES_CACHE["p"]


# ---- safety and limits -----------------------------------------------------------------------
_UNSAFE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:real|actual|raw|original|underlying|individual|identif\w*|genuine|true)\b[\w\s,'-]{0,40}"
                r"\b(?:rows?|records?|patients?|data|entries|participants?|people|persons?)\b"
                r"|\bnhanes\b[\w\s,'-]{0,20}\b(?:rows?|records?|participants?|raw data|microdata)\b"
                r"|\b(?:training|source) (?:rows|records|data)\b", re.I),
     "I can't show or export real patient records: synthehr only shares differentially private synthetic data "
     "and aggregate statistics of it. Ask me to generate a synthetic cohort instead."),
    (re.compile(r"\b(?:re-?identify|de-?anonymi[sz]e|deanonymi[sz]e|link (?:them|the records) to|find out who)\b", re.I),
     "I can't help re-identify people. synthehr only produces differentially private synthetic records."),
    (re.compile(r"\b(?:delete|remove|wipe|erase|drop|destroy|purge|format|rm\s+-rf|truncate|overwrite)\b[\w\s,'-]{0,30}"
                r"\b(?:workspace|database|db|files?|folders?|director(?:y|ies)|data ?sets?|models?|ledger|tables?|"
                r"everything|all|disk|home)\b", re.I),
     "I can't delete or modify files, data sets, models or the workspace: none of my tools does that. "
     "Manage the workspace directory yourself if you need to remove something."),
    (re.compile(r"\b(?:run|execute|eval(?:uate)?|exec)\b[\w\s,'-]{0,25}\b(?:code|script|shell|command|python|bash|sql)\b"
                r"|\b(?:import os|subprocess|os\.system|rm -rf|/bin/sh|sudo)\b", re.I),
     "I can't run code or shell commands; my tools only generate synthetic cohorts, compute their statistics and "
     "explain their provenance."),
    (re.compile(r"(?:/etc/|~/|\.\./|\bc:\\|/root/|/home/|\.ssh|passwd|\.env\b)|\b(?:read|open|cat|show|print)\b[\w\s,'-]{0,20}"
                r"\b(?:file|path|directory)\b[\w\s,'-]{0,10}\b(?:outside|/)", re.I),
     "I can't read files outside the synthehr workspace."),
    (re.compile(r"\b(?:reset|increase|raise|refill|ignore|bypass|disable|turn off|skip)\b[\w\s,'-]{0,25}"
                r"\b(?:privacy budget|budget|ledger|differential privacy|privacy|dp|limits?|max_rows|safety)\b", re.I),
     "I can't change or bypass the privacy budget, the ledger or the safety limits; an administrator sets them in "
     "the configuration."),
]


def check_request(text: str) -> None:
    """Raise Decline for requests synthehr must refuse before any tool runs (unsafe or destructive)."""
    for pattern, answer in _UNSAFE:
        m = pattern.search(text)
        if not m:
            continue
        # "synthetic ... data" is what we make; "real" in e.g. "real-world sources" is provenance, not rows.
        frag = m.group(0).lower()
        if pattern is _UNSAFE[0][0] and (
            "synthetic" in frag or "real-world" in text.lower() or "real world" in text.lower()
            and not re.search(r"\b(?:rows?|records?)\b", frag)
        ):
            continue
        raise Decline(answer)


def check_limits(facts: Facts, settings: "Settings") -> None:
    """Raise Decline when the user asks for more records or a larger epsilon than the limits allow."""
    max_rows = settings.generation.max_rows
    if facts.n is not None and facts.n > max_rows:
        raise Decline(
            f"I can't generate {facts.n:,} records: one request may ask for at most {max_rows:,} "
            f"(the limit generation.max_rows). Ask for {max_rows:,} or fewer."
        )
    if facts.n is not None and facts.n < 1:
        raise Decline("The number of records must be at least 1.")
    max_eps = settings.privacy.max_epsilon_per_request
    if facts.epsilon is not None and facts.epsilon > max_eps and (facts.n is not None or _ACTION_VERB.search(facts.text)
                                                                   or not facts.text):
        raise Decline(
            f"I can't train with epsilon {facts.epsilon:g}: one request may spend at most epsilon {max_eps:g} "
            f"(the limit privacy.max_epsilon_per_request); a larger epsilon gives much weaker privacy. "
            f"Ask for epsilon {max_eps:g} or less (the default is {settings.privacy.target_epsilon:g})."
        )
    if facts.epsilon is not None and facts.epsilon <= 0:
        raise Decline("Epsilon must be greater than 0.")


def check_args_limits(spec: "ToolSpec", args: dict[str, Any], settings: "Settings") -> None:
    """Decline tool arguments above the limits (whatever wrote them)."""
    roles = model_roles(spec.args_model)
    for key, value in args.items():
        role = roles.get(key)
        if role == "n" and isinstance(value, (int, float)) and not isinstance(value, bool):
            check_limits(Facts(text="", n=int(value)), settings)
        elif role == "epsilon" and isinstance(value, (int, float)) and not isinstance(value, bool):
            check_limits(Facts(text="", epsilon=float(value)), settings)


# ---- grounding of one tool call ----------------------------------------------------------------
def _fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def _annotation_text(info: Any) -> str:
    return str(info.annotation).lower()


def _nested_model(info: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `Filters | None`."""
    ann = info.annotation
    candidates = [ann, *getattr(ann, "__args__", ())]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def _is_list(info: Any) -> bool:
    return "list[" in _annotation_text(info)


def _in_text(value: Any, facts: Facts, role: str | None = None) -> bool:
    """Whether a number the model wrote appears in the user's words (and is not the user's value of
    another argument: the 1000 of "1000 patients" is not an observation count)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    taken = {"n": facts.n, "n_obs": facts.n_obs, "epsilon": facts.epsilon, "seed": facts.seed,
             "age_min": facts.age_min, "age_max": facts.age_max}
    others = {float(x) for r, x in taken.items() if r != role and x is not None}
    return v in facts.numbers and v not in others


def _condition_value(profile: Any, info: Any) -> str:
    """The value to put in a condition field: the profile's name (or id when the field wants ids)."""
    desc = (getattr(info, "description", None) or "").lower()
    return profile.id if " id" in desc or "kebab" in desc else profile.name


def ground_args(
    spec: "ToolSpec",
    args: dict[str, Any],
    facts: Facts,
    session: "SessionState",
    settings: "Settings",
    profiles: dict[str, Any] | None = None,
    sources: list[str] | None = None,
    columns: set[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Return (grounded arguments, notes saying what was changed). Raises ToolInputError when the
    condition cannot be resolved and Decline when a limit is exceeded."""
    from synthehr.tools.base import ToolInputError

    profiles = _profiles() if profiles is None else profiles
    out = dict(args)
    notes: list[str] = []
    fields = _fields(spec.args_model)
    roles = model_roles(spec.args_model)
    last = _last_generation(session)
    is_generation = {"condition", "n"} <= set(roles.values())
    inherit = is_generation and last is not None and (facts.follow_up or facts.condition is None)

    def set_(key: str, value: Any, why: str) -> None:
        if out.get(key) != value:
            old = out.get(key, "(none)")
            out[key] = value
            notes.append(f"{key}: {old} -> {value} ({why})")

    def drop(key: str, why: str) -> None:
        if key in out:
            notes.append(f"{key}: dropped {out.pop(key)!r} ({why})")

    for key, info in fields.items():
        role = roles.get(key)
        if role is None:
            _ground_choice(key, info, out, facts, notes)
            continue
        prev = (last or {}).get(key) if inherit else None
        if role == "n":
            if facts.n is not None:
                set_(key, facts.n, "the user's number")
            elif prev is not None:
                set_(key, prev, "same as the last cohort")
            elif key in out and not _in_text(out[key], facts, "n"):
                drop(key, "not in the request; the default applies")
        elif role == "n_obs":
            if _is_list(info) and "int" not in _annotation_text(info).replace("list[int]", ""):
                continue
            if isinstance(out.get(key), list):
                named = observation_columns(facts.text, profiles)
                if facts.n_obs is None and not named:
                    drop(key, "observations not named in the request; the condition's key observations apply")
                    continue
            if facts.n_obs is not None:
                set_(key, facts.n_obs, "the user's number")
            elif prev is not None:
                set_(key, prev, "same as the last cohort")
            elif key in out and not _in_text(out[key], facts, "n_obs"):
                drop(key, "not in the request; the default applies")
        elif role in ("epsilon", "delta", "seed"):
            mine = {"epsilon": facts.epsilon, "seed": facts.seed}.get(role)
            if mine is not None:
                set_(key, mine, "the user's value")
            elif prev is not None and role != "delta":
                set_(key, prev, "same as the last cohort")
            elif key in out and not _in_text(out[key], facts, role):
                drop(key, "not in the request; the configured default applies")
            if role == "epsilon" and key not in out and info.is_required():
                set_(key, settings.privacy.target_epsilon, "the configured default")
        elif role == "condition":
            if facts.condition is not None:
                set_(key, _condition_value(facts.condition, info), "the condition the user named")
            elif prev is not None:
                set_(key, prev, "the last cohort's condition")
            elif out.get(key) and profiles:
                valid = ", ".join(p.name for p in profiles.values())
                raise ToolInputError(
                    f"the request names no condition (the user did not say {out[key]!r}); valid conditions: {valid}. "
                    "Ask the user which condition they want."
                )
            elif out.get(key):
                try:
                    from synthehr.tools.store.profiles import resolve_condition

                    profile = resolve_condition(str(out[key]), profiles or None)
                    set_(key, _condition_value(profile, info), "resolved")
                except ValueError:
                    valid = ", ".join(p.name for p in (profiles or {}).values())
                    raise ToolInputError(
                        f"unknown condition {out[key]!r}; valid conditions: {valid}. Use the condition the user named."
                    ) from None
            elif info.is_required():
                valid = ", ".join(p.name for p in (profiles or {}).values())
                raise ToolInputError(f"which condition? The request names none; valid conditions: {valid}")
        elif role == "population":
            if facts.population:
                set_(key, facts.population, "the user's words")
            elif prev is not None:
                set_(key, prev, "same as the last cohort")
            elif key in out and out[key] and not _mentioned(str(out[key]), facts.text):
                drop(key, "not in the request")
        elif role == "dataset":
            if facts.dataset:
                set_(key, facts.dataset, "the id the user wrote")
            elif info.is_required() or info.default == "last":
                set_(key, "last", "the data set of this conversation")
            elif session.last_dataset and _REFERS_TO_DATA.search(facts.text):
                set_(key, "last", "the data set of this conversation")
            elif out.get(key) is not None:
                # An optional data-set reference the user did not make ("who publishes NHANES?" is not about
                # the last cohort): dropped, so a general question is answered from the documents.
                drop(key, "the request does not refer to a data set")
        elif role == "columns":
            wanted = observation_columns(facts.text, profiles)
            current = out.get(key)
            if wanted:
                set_(key, wanted, "the observations the user named")
            elif current:
                drop(key, "not named in the request; the condition's key observations apply")
        elif role == "by":
            groups = [g for g, pat in _GROUPS.items() if pat.search(facts.text)]
            if groups:
                set_(key, groups[:2], "the grouping the user asked for")
            elif out.get(key):
                drop(key, "not in the request")
        elif role == "proportions":
            m = re.search(r"(\d{1,3}(?:\.\d+)?)\s*%\s*(?:of them\s+)?(?:are\s+)?(women|female|females|men|male|males)\b",
                          facts.text, re.I)
            if m:
                sex = "female" if m.group(2).lower().startswith(("w", "f")) else "male"
                _, sex_col = _demographic_columns()
                value: Any = {f"{sex_col}={sex}": round(float(m.group(1)) / 100, 4)}
                if "dict" not in _annotation_text(info):
                    value = [f"{sex_col}={sex}:{m.group(1)}%"]
                set_(key, value, "the share the user asked for")
            elif out.get(key):
                nums = _numbers_in(json.dumps(out[key]))
                if not all(x in facts.numbers or round(x * 100, 6) in facts.numbers for x in nums):
                    drop(key, "not in the request")
        elif role in ("thresholds", "correlation", "plot"):
            if out.get(key) and not _REQUEST_WORDS[role].search(facts.text):
                drop(key, "not asked for")
            elif role == "plot" and not out.get(key) and _REQUEST_WORDS["plot"].search(facts.text):
                named = observation_columns(facts.text, profiles)
                if named:
                    set_(key, named, "the plot the user asked for")
            elif role == "thresholds" and not out.get(key):
                asked = [r for r, _ in user_thresholds(facts.text)]
                if asked:
                    set_(key, asked, "the threshold the user asked for")
        elif role == "question":
            set_(key, facts.text.strip()[:2000], "the user's question")
        elif role == "filters":
            _ground_filters(key, info, out, facts, last if inherit else None, notes, columns)
        elif role in ("age_min", "age_max", "sex"):
            value = _filter_value(role, facts, (last or {}).get(key) if inherit else None)
            if value is not None:
                set_(key, value, "the user's words")
            elif key in out and not _mentioned(str(out[key]), facts.text):
                drop(key, "not in the request")
        elif role == "source":
            named = [x for x in (sources or []) if _mentioned(x, facts.text) or _mentioned(x.split("-")[0], facts.text)]
            if named:
                set_(key, named[0], "the source the user named")
            elif prev is not None:
                set_(key, prev, "same as the last cohort")
            elif key in out and out[key] and not _mentioned(str(out[key]).split("-")[0], facts.text):
                drop(key, "not in the request; the condition's source applies")
            if key not in out and info.is_required():
                profile = facts.condition
                if profile is None and last and last.get("condition"):
                    try:
                        from synthehr.tools.store.profiles import resolve_condition

                        profile = resolve_condition(str(last["condition"]), profiles or None)
                    except ValueError:
                        profile = None
                if profile is not None and getattr(profile, "source", None):
                    set_(key, profile.source, "the condition's source")
                elif sources and len(sources) == 1:
                    set_(key, sources[0], "the only registered source")
    return out, notes


def _literal_choices(info: Any) -> list[str]:
    import typing

    ann = info.annotation
    stack, out = [ann], []
    while stack:
        a = stack.pop()
        if typing.get_origin(a) is typing.Literal:
            out += [v for v in typing.get_args(a) if isinstance(v, str)]
        else:
            stack += list(typing.get_args(a))
    return out


def _ground_choice(key: str, info: Any, out: dict[str, Any], facts: Facts, notes: list[str]) -> None:
    """An enum argument: the choice the user's words name wins; an unnamed choice falls back to the default.

    Any other number (e.g. how many passages to return) that the user did not write is an invention of the
    model: it is dropped so the tool's default applies (or, for a required one, validation asks for it).
    """
    value = out.get(key)
    # A number the user never wrote is invented, required or not: dropped (a required one is then asked for).
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and float(value) not in facts.numbers):
        notes.append(f"{key}: dropped {out.pop(key)!r} (not in the request; the default applies)")
        return
    choices = _literal_choices(info)
    if len(choices) < 2:
        return
    toks = {c: set(re.findall(r"[a-z0-9]+", c.lower())) for c in choices}
    common = set.intersection(*toks.values())
    words = set(re.findall(r"[a-z0-9]+", facts.text.lower()))
    named = [c for c in choices if (toks[c] - common) & words]
    if len(named) == 1:
        if out.get(key) != named[0]:
            notes.append(f"{key}: {out.get(key, '(none)')} -> {named[0]} (the user's words)")
            out[key] = named[0]
    elif key in out and out[key] not in named and not info.is_required():
        notes.append(f"{key}: dropped {out.pop(key)!r} (not in the request; the default applies)")


def _filter_value(role: str, facts: Facts, prev: Any) -> Any:
    if role == "sex":
        return facts.sex or prev
    if role == "age_min":
        if facts.age_min is not None:
            return facts.age_min
        if facts.older:
            return max(65, int(prev) + 10) if isinstance(prev, (int, float)) else 65
        return prev
    if role == "age_max":
        if facts.age_max is not None:
            return facts.age_max
        if facts.younger:
            return 40
        return prev
    return None


# ---- clinical attributes of a generation request ----------------------------------------------------------
# (phrase pattern, filter rule on a source column). A rule applies only where the chosen source has the column;
# elsewhere the phrase is named as not honoured. Checked in order; one rule per column.
ATTRIBUTE_RULES: list[tuple[re.Pattern[str], str]] = [(re.compile(p, re.I), r) for p, r in [
    (r"\b(?:not on|without|no) insulin\b|\bnot (?:taking|using) insulin\b", "insulin_now=0"),
    (r"\bon insulin\b|\b(?:taking|using|use|uses|need|needing|requiring) insulin\b|\binsulin[- ](?:users?|treated|dependent)\b",
     "insulin_now=1"),
    (r"\b(?:taking|on|using) (?:diabetes |oral |glucose[- ]lowering |blood sugar )?(?:pills|tablets|oral agents|"
     r"oral medications?)\b", "diabetes_pills=1"),
    (r"\b(?:non-?smokers?|never[- ]smok\w*|who (?:have )?never smoked|don'?t smoke|do not smoke)\b", "smoking_status=never"),
    (r"\b(?:former|ex-?|past|quit) ?smokers?\b|\bwho (?:used to smoke|quit smoking)\b", "smoking_status=former"),
    (r"\b(?:current )?smokers?\b|\bwho smoke\b|\bsmoking (?:patients|adults|people)\b|\bthat smoke\b",
     "smoking_status=current"),
    (r"\b(?:obese|with obesity|obesity)\b", "bmi_kg_m2>=30"),
    (r"\boverweight\b", "bmi_kg_m2>=25"),
    (r"\b(?:had a stroke|history of (?:a )?stroke|stroke survivors?|post-?stroke|with (?:a )?(?:prior )?stroke)\b",
     "stroke=1"),
    (r"\b(?:heart attacks?|myocardial infarction|prior mi|history of mi)\b", "heart_attack=1"),
    (r"\b(?:uninsured|without (?:health )?insurance|no (?:health )?insurance)\b", "health_insurance=0"),
    (r"\b(?:with asthma|asthmatics?)\b", "asthma=1"),
    (r"\bwith arthritis\b", "arthritis=1"),
]]
# Observations named with a threshold in a generation request ("with HbA1c above 9").
_THRESHOLD_COLUMNS = {"hba1c": "hba1c_pct", "a1c": "hba1c_pct", "bmi": "bmi_kg_m2", "systolic": "sbp_mmhg",
                      "sbp": "sbp_mmhg", "diastolic": "dbp_mmhg", "dbp": "dbp_mmhg", "waist": "waist_cm",
                      "hdl": "hdl_mg_dl", "cholesterol": "total_chol_mg_dl", "weight": "weight_kg"}
_THRESHOLD = re.compile(r"\b(hba1c|a1c|bmi|systolic|sbp|diastolic|dbp|waist|hdl|cholesterol|weight)\b[\w\s]{0,12}?"
                        r"(>=|<=|>|<|≥|≤|above|over|greater than|more than|at least|below|under|less than|at most)\s*"
                        r"(\d+(?:\.\d+)?)", re.I)
_OPS = {"above": ">", "over": ">", "greater than": ">", "more than": ">", "at least": ">=", "below": "<",
        "under": "<", "less than": "<", "at most": "<=", "≥": ">=", "≤": "<="}
# Clinical attributes no registered source records: named in the answer as not applied.
UNMEASURED = re.compile(
    r"\b(?:on |taking |using )?(?:metformin|statins?|ace[- ]inhibitors?|arbs?|sglt-?2 inhibitors?|glp-?1(?: agonists?)?|"
    r"beta[- ]blockers?|diuretics?|anticoagulants?)\b|\b(?:with |has |having )?(?:diabetic )?(?:retinopathy|neuropathy|"
    r"nephropathy|foot ulcers?|amputations?|dialysis|pregnan\w*|gestational|dementia|depression|cancer)\b|"
    r"\b(?:ckd |gold |nyha |hypertension )?stage (?:[1-5]|i{1,3}v?|iv|v)(?:[ab])?\b|\begfr\b[^,.;]{0,20}|"
    r"\b(?:reduced|preserved) ejection fraction\b|\bhfrel?ef\b|\bhfpef\b|\bfev1\b[^,.;]{0,20}|\balbuminuria\b",
    re.I)


_THRESHOLD_AFTER = re.compile(
    r"\b(hba1c|a1c|bmi|systolic|sbp|diastolic|dbp|waist|hdl|cholesterol|weight)\b[\w\s]{0,14}?(?:of\s+|at\s+)?"
    r"(\d+(?:\.\d+)?)\s*(?:%|mmhg|kg/m2|mg/dl|cm|kg)?\s*(or more|or higher|or above|or over|\+|and above|and over|"
    r"or less|or lower|or below|or under|and below|and under)", re.I)


def user_thresholds(text: str) -> list[tuple[str, str]]:
    """[(rule on a source column, the user's phrase)] of observation thresholds in a request ("HbA1c above 9",
    "an A1c of 8 or more")."""
    out: list[tuple[str, str]] = []
    cols: set[str] = set()
    for m in _THRESHOLD.finditer(text):
        col = _THRESHOLD_COLUMNS[m.group(1).lower()]
        if col not in cols:
            out.append((f"{col}{_OPS.get(m.group(2).lower(), m.group(2))}{m.group(3)}", m.group(0).strip()))
            cols.add(col)
    for m in _THRESHOLD_AFTER.finditer(text):
        col = _THRESHOLD_COLUMNS[m.group(1).lower()]
        op = ">=" if re.search(r"more|higher|above|over|\+", m.group(3), re.I) else "<="
        if col not in cols:
            out.append((f"{col}{op}{m.group(2)}", m.group(0).strip()))
            cols.add(col)
    return out


def clinical_attributes(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """([(filter rule, the user's phrase)], [phrases of attributes no source records]) of a request."""
    rules: list[tuple[str, str]] = []
    used_cols: set[str] = set()
    for pattern, rule in ATTRIBUTE_RULES:
        m = pattern.search(text)
        col = re.split(r"[<>=!]", rule)[0]
        if m and col not in used_cols:
            rules.append((rule, m.group(0).strip()))
            used_cols.add(col)
    for rule, phrase in user_thresholds(text):
        col = re.split(r"[<>=!]", rule)[0]
        if col not in used_cols:
            rules.append((rule, phrase))
            used_cols.add(col)
    unmet = list(dict.fromkeys(m.group(0).strip() for m in UNMEASURED.finditer(text)))
    return rules, unmet


def _ground_filters(key: str, info: Any, out: dict[str, Any], facts: Facts, last: dict[str, Any] | None,
                    notes: list[str], columns: set[str] | None = None) -> None:
    """Set age/sex filters on a nested model, a dict or a list of textual rules."""
    prev = (last or {}).get(key)
    model = _nested_model(info)
    wanted: dict[str, Any] = {}
    if model is not None:
        for sub, sub_info in model.model_fields.items():
            role = field_role(sub)
            if role in ("age_min", "age_max", "sex"):
                v = _filter_value(role, facts, (prev or {}).get(sub) if isinstance(prev, dict) else None)
                if v is not None:
                    wanted[sub] = v
        if isinstance(prev, dict):
            wanted = {**{k: v for k, v in prev.items() if v is not None}, **wanted}
    elif "dict" in _annotation_text(info):
        base = dict(prev) if isinstance(prev, dict) else {}
        for role in ("age_min", "age_max", "sex"):
            v = _filter_value(role, facts, base.get(role))
            if v is not None:
                base[role] = v
        wanted = base
    elif _is_list(info):
        age_col, sex_col = _demographic_columns()
        prev_rules = [str(r) for r in prev] if isinstance(prev, list) else []
        prev_age_min = _rule_value(prev_rules, age_col, (">=", ">"))
        prev_age_max = _rule_value(prev_rules, age_col, ("<=", "<"))
        prev_sex = _rule_value(prev_rules, sex_col, ("=", "=="))
        rules = list(prev_rules)
        # Filters the model wrote are kept only when their numbers are in the user's words.
        for r in out.get(key) or []:
            text_rule = r if isinstance(r, str) else None
            if text_rule and _numbers_in(text_rule) and _numbers_in(text_rule) <= facts.numbers and text_rule not in rules \
                    and not text_rule.startswith((age_col, sex_col)):
                rules.append(text_rule)
        age_min = _filter_value("age_min", facts, prev_age_min)
        age_max = _filter_value("age_max", facts, prev_age_max)
        sex = _filter_value("sex", facts, prev_sex)
        rules = [r for r in rules if not r.replace(" ", "").startswith((age_col + ">", age_col + "<", sex_col + "="))]
        if age_min is not None:
            rules.append(f"{age_col}>={int(age_min) if float(age_min).is_integer() else age_min}")
        if age_max is not None:
            rules.append(f"{age_col}<={int(age_max) if float(age_max).is_integer() else age_max}")
        if sex is not None:
            rules.append(f"{sex_col}={sex}")
        for rule, _phrase in facts.attributes:
            col = re.split(r"[<>=!]", rule)[0]
            if columns is not None and col not in columns:
                continue
            rules = [r for r in rules if re.split(r"\s*[<>=!]", r.replace(" ", ""))[0] != col]
            rules.append(rule)
        if rules:
            if out.get(key) != rules:
                notes.append(f"{key}: {out.get(key)} -> {rules} (the user's words)")
                out[key] = rules
        elif key in out and out[key]:
            notes.append(f"{key}: dropped {out.pop(key)!r} (not in the request)")
        return
    else:
        return
    if wanted:
        if out.get(key) != wanted:
            notes.append(f"{key}: {out.get(key)} -> {wanted} (the user's words)")
            out[key] = wanted
    elif key in out and out[key]:
        notes.append(f"{key}: dropped {out.pop(key)!r} (not in the request)")


def _demographic_columns() -> tuple[str, str]:
    """The source columns of age and sex (from the condition profiles; NHANES names by default)."""
    age, sex = "age_years", "sex"
    for profile in (_profiles() or {}).values():
        for obs in profile.observations:
            if obs.name == "age" and obs.source_column:
                age = obs.source_column
            if obs.name == "sex" and obs.source_column:
                sex = obs.source_column
    return age, sex


def _rule_value(rules: list[str], column: str, ops: tuple[str, ...]) -> Any:
    for r in rules:
        m = re.match(r"^\s*" + re.escape(column) + r"\s*(>=|<=|==|!=|=|>|<)\s*(.+?)\s*$", r)
        if m and m.group(1) in ops:
            raw = m.group(2).strip("'\"")
            try:
                return float(raw)
            except ValueError:
                return raw
    return None


def _numbers_in(text: str) -> set[float]:
    return {float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)}


def _last_generation(session: "SessionState") -> dict[str, Any] | None:
    gen = (session.extra or {}).get("last_generation")
    if isinstance(gen, dict) and isinstance(gen.get("args"), dict):
        return dict(gen["args"])
    if isinstance(session.last_cohort, dict):
        return dict(session.last_cohort)
    return None


def _mentioned(value: str, text: str) -> bool:
    v = re.sub(r"[^0-9a-z]+", " ", value.lower()).strip()
    t = " " + re.sub(r"[^0-9a-z]+", " ", text.lower()) + " "
    return bool(v) and f" {v} " in t


def _mostly_from(value: str, text: str) -> bool:
    """Whether most words of `value` occur in `text` (the model copied the user's question)."""
    words = re.findall(r"[a-z0-9]+", value.lower())
    if not words:
        return False
    have = set(re.findall(r"[a-z0-9]+", text.lower()))
    return sum(w in have for w in words) / len(words) >= 0.7


def build_args(spec: "ToolSpec", facts: Facts, session: "SessionState", settings: "Settings") -> dict[str, Any]:
    """Arguments for `spec` from the user's words alone (used when the router overrides the model's choice)."""
    args, _ = ground_args(spec, {}, facts, session, settings)
    return args
