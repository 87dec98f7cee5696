"""Tool: generate a synthetic cohort for a condition (the headline request).

"generate 2000 Type 2 diabetes patients with 20 important diabetes observations based on the US
population" -> resolve the condition profile, pick the data source for the population, map the
requested observations to source columns (saying which no source has), reuse a fitting trained
generator or train one (charging the privacy ledger), sample exactly n records that meet the cohort
definition, and write data.csv, data.parquet, card.json and card.md atomically into
<workspace>/datasets/<dataset_id>/.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from synthehr.tools.base import Figure, Missing, SourceRef, ToolInputError, ToolResult, ToolSpec
from synthehr.tools.deps import Deps
from synthehr.tools.store.schema import ColumnType, SourceSchema
from synthehr.tools.store.workspace import atomic_write_text, new_id, now_iso

DEMOGRAPHICS = ("age_years", "sex", "race_ethnicity")
DEFAULT_OBSERVATIONS = 10
_US = {"us", "usa", "u s", "u s a", "united states", "united states of america", "america", "american", "us population",
       "us adults", "american adults", "the us", "the united states", "us american"}


class FilterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str = Field(description="Column to filter on, e.g. 'age_years'.")
    op: str = Field(description="One of >=, >, <=, <, ==, !=.")
    value: float | int | str = Field(description="Threshold or category.")


class GenerateCohortArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    condition: str = Field(json_schema_extra={"role": "condition"}, description="The condition of the cohort in plain words, e.g. 'type 2 diabetes'.")
    n: int | None = Field(json_schema_extra={"role": "n"}, default=None, gt=0, description="Number of synthetic patients (records) to generate.")
    observations: int | list[str] | None = Field(
        json_schema_extra={"role": "n_obs"},
        default=None, description="How many of the condition's most important observations to include (e.g. 20), "
                                  "or a list of observation names (e.g. ['hba1c', 'bmi']).")
    population: str | None = Field(
        default=None, json_schema_extra={"role": "population"},
        description="Population whose make-up the cohort should match, e.g. 'US' (age, sex and "
                    "race/ethnicity follow public US figures for people with the condition); leave "
                    "out to mirror the source sample.")
    filters: list[str | FilterSpec] | None = Field(
        json_schema_extra={"role": "filters"},
        default=None, description="Extra cohort filters, e.g. ['age_years>=65', 'hba1c_pct>=9'].")
    proportions: dict[str, float] | list[str] | None = Field(
        json_schema_extra={"role": "proportions"},
        default=None, description="Target shares, e.g. {'sex=female': 0.4, 'age_years>=65': 0.6}.")
    epsilon: float | None = Field(json_schema_extra={"role": "epsilon"}, default=None, gt=0, description="Privacy budget epsilon if a new generator must be trained (default from config).")
    seed: int | None = Field(json_schema_extra={"role": "seed"}, default=None, description="Random seed (same seed, same records).")
    source: str | None = Field(json_schema_extra={"role": "source"}, default=None, description="Registered data source to use (overrides population).")


# ---- condition, source, cohort ------------------------------------------------------------
def resolve_profile(condition: str) -> Any:
    from synthehr.tools.store.profiles import ProfileNotFound, load_profiles, resolve_condition

    try:
        return resolve_condition(condition, load_profiles(), strict=True)
    except ProfileNotFound as exc:
        raise ToolInputError(str(exc)) from None


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def pick_source(deps: Deps, profile: Any, population: str | None, source: str | None) -> str:
    names = deps.catalog.names()
    listing = "; ".join(f"{n} ({deps.catalog.get(n).meta.population})" for n in names)
    if source:
        if source not in names:
            raise ToolInputError(f"unknown data source '{source}'; registered sources: {listing}")
        return source
    if population:
        p = _norm(population)
        matches = []
        for n in names:
            meta = deps.catalog.get(n).meta
            hay = _norm(" ".join([n, meta.title, meta.population, meta.description]))
            if p in _US and (" us " in f" {hay} " or "united states" in hay):
                matches.append(n)
            elif p and p not in _US and f" {p} " in f" {hay} ":
                matches.append(n)
        if not matches:
            raise ToolInputError(f"no registered data source covers the population '{population}'; sources: {listing}")
        if profile.source in matches:
            return profile.source
        return matches[0]
    if profile.source and profile.source in names:
        return profile.source
    raise ToolInputError(f"no registered data source holds '{profile.name}'; register one (synthehr sources add) "
                         f"or name one of: {listing}")


def rule_mask(rule: Any, frame: pd.DataFrame) -> np.ndarray:
    """Vectorised CohortRule.matches (a missing value never matches)."""
    s = frame[rule.column]
    present = s.notna().to_numpy()

    def same(v: Any) -> np.ndarray:
        if isinstance(v, str):
            low = s.astype(object).map(lambda x: str(x).strip().lower() if x is not None and x is not pd.NA else None)
            return (low == v.strip().lower()).fillna(False).to_numpy(bool)
        x = pd.to_numeric(s, errors="coerce").astype(float).to_numpy()
        with np.errstate(invalid="ignore"):
            return x == float(v)

    if rule.equals is not None:
        m = same(rule.equals)
    elif rule.values is not None:
        m = np.zeros(len(s), dtype=bool)
        for v in rule.values:
            m |= same(v)
    else:
        x = pd.to_numeric(s, errors="coerce").astype(float).to_numpy()
        m = np.ones(len(s), dtype=bool)
        with np.errstate(invalid="ignore"):
            if rule.min is not None:
                m &= x >= rule.min
            if rule.max is not None:
                m &= x <= rule.max
            if rule.above is not None:
                m &= x > rule.above
            if rule.below is not None:
                m &= x < rule.below
    return m & present


def cohort_plan(profile: Any, schema: SourceSchema) -> dict[str, Any]:
    """Cohort rules usable on the source, a predicate, and the column to condition on (if any)."""
    cols = schema.column_map()
    all_of = list(profile.cohort.all_of)
    missing_all = [r.column for r in all_of if r.column not in cols]
    if missing_all:
        raise ToolInputError(f"the cohort definition of {profile.name} needs column(s) {', '.join(missing_all)}, "
                             f"which {schema.name} does not have")
    any_of = [r for r in profile.cohort.any_of if r.column in cols]
    dropped = [r.column for r in profile.cohort.any_of if r.column not in cols]
    if profile.cohort.any_of and not any_of:
        raise ToolInputError(f"none of the columns in the cohort definition of {profile.name} "
                             f"({', '.join(dropped)}) is in {schema.name}")

    def where(frame: pd.DataFrame) -> np.ndarray:
        m = np.ones(len(frame), dtype=bool)
        for r in all_of:
            m &= rule_mask(r, frame)
        if any_of:
            anym = np.zeros(len(frame), dtype=bool)
            for r in any_of:
                anym |= rule_mask(r, frame)
            m &= anym
        return m

    fixed: dict[str, Any] = {}
    for r in all_of:
        c = cols[r.column]
        if r.equals is not None and c.type in (ColumnType.binary, ColumnType.categorical):
            fixed[r.column] = r.equals
    cohort_column = None
    m = re.search(r"`([a-z][a-z0-9_]*)\s*==\s*1`", profile.cohort.description or "")
    if m and m.group(1) in cols and cols[m.group(1)].type is ColumnType.binary:
        cohort_column = m.group(1)
        fixed.setdefault(cohort_column, 1)
    rules = [r.model_dump(exclude_none=True) for r in all_of] + (
        [{"any_of": [r.model_dump(exclude_none=True) for r in any_of]}] if any_of else [])
    return {"where": where, "fixed": fixed, "cohort_column": cohort_column, "rules": rules,
            "rule_columns": sorted({r.column for r in all_of + any_of}), "dropped_rule_columns": dropped}


def map_observations(profile: Any, schema: SourceSchema, observations: int | list[str] | None) -> tuple[list[dict], list[dict]]:
    """(chosen [{name,label,column}], missing [{name,label,reason}]) in ranked order."""
    cols = schema.column_map()
    avail = [o for o in profile.observations if o.source_column and o.source_column in cols]
    if observations is None:
        observations = DEFAULT_OBSERVATIONS
    chosen, missing = [], []
    if isinstance(observations, int):
        if observations < 0:
            raise ToolInputError("observations must be a count of 0 or more, or a list of names")
        for o in avail[:observations]:
            chosen.append({"name": o.name, "label": o.label, "column": o.source_column})
        top = profile.observations[: max(observations, 0)]
        for o in top:
            if not (o.source_column and o.source_column in cols):
                missing.append({"name": o.name, "label": o.label, "loinc": o.loinc,
                                "reason": f"not in {schema.name}" if o.source_column is None else
                                f"{schema.name} has no column '{o.source_column}'"})
        if len(avail) < observations:
            missing.append({"name": "(more)", "label": f"only {len(avail)} of the requested {observations} observations "
                            f"of {profile.name} are available in {schema.name}", "reason": "not enough observations"})
        return chosen, missing
    by_key: dict[str, Any] = {}
    for o in profile.observations:
        for key in (o.name, o.label, o.source_column or ""):
            if key:
                by_key.setdefault(_norm(key), o)
    for name in observations:
        o = by_key.get(_norm(str(name)))
        if o is not None:
            if o.source_column and o.source_column in cols:
                if o.source_column not in [c["column"] for c in chosen]:
                    chosen.append({"name": o.name, "label": o.label, "column": o.source_column})
            else:
                missing.append({"name": o.name, "label": o.label, "loinc": o.loinc, "reason": f"not in {schema.name}"})
        elif str(name) in cols:
            c = cols[str(name)]
            chosen.append({"name": c.name, "label": c.label or c.name, "column": c.name})
        else:
            missing.append({"name": str(name), "label": str(name),
                            "reason": f"not an observation of {profile.name} and not a column of {schema.name}"})
    return chosen, missing


# ---- models -------------------------------------------------------------------------------
def model_conditions(plan: dict[str, Any], schema: SourceSchema) -> list[str]:
    """The columns a generator for this cohort is conditioned on."""
    cols = schema.column_map()
    conditions = [c for c in ([plan["cohort_column"]] if plan["cohort_column"] else [])]
    # Binary columns of the cohort definition (e.g. diabetes_diagnosed) are conditioned on too: their
    # joint DP histogram is cheap and keeps their share inside the cohort realistic (measured at
    # epsilon 1: diagnosed share 0.86-0.88 vs 0.82 real, instead of 0.72-0.77).
    conditions += [c for c in plan["rule_columns"] if c not in conditions and cols[c].type is ColumnType.binary]
    if "sex" in cols and cols["sex"].type in (ColumnType.binary, ColumnType.categorical):
        conditions.append("sex")
    if not conditions:
        conditions = [c for c in schema.condition_columns[:2]]
    return conditions


def has_model(deps: Deps, source: str, conditions: list[str], epsilon: float | None) -> bool:
    """Whether find_model would find a candidate (the same checks, without loading any model)."""
    chash = deps.catalog.content_hash(source)
    rows = deps.workspace.query("SELECT * FROM models WHERE source = ?", (source,))
    for row in rows:
        if not set(conditions) <= set(json.loads(row["conditions_json"] or "[]")):
            continue
        if epsilon is not None and float(row["epsilon"]) > epsilon + 1e-12:
            continue
        if json.loads(row["manifest_json"] or "{}").get("extra", {}).get("source_content_hash") == chash:
            return True
    return False


def describe(deps: Deps, args: GenerateCohortArgs) -> str:
    """The thought before the call: what will be generated, from what, and whether a model must be trained first."""
    profile = resolve_profile(args.condition)
    source = pick_source(deps, profile, args.population, args.source)
    schema = deps.catalog.get(source)
    n = args.n or deps.settings.generation.default_rows
    filters = [f if isinstance(f, str) else FilterSpec.model_validate(f).model_dump() for f in (args.filters or [])]
    where = ", ".join(plain_filter(f, schema) if isinstance(f, str) else f"{f['column']} {f['op']} {f['value']}"
                      for f in filters)
    text = f"Generating {n:,} patients with {profile.name}" + (f" ({where})" if where else "") + \
        f" from {short_source(schema.meta)}"
    if has_model(deps, source, model_conditions(cohort_plan(profile, schema), schema), args.epsilon):
        return text + "; reusing the trained generator."
    eps = args.epsilon or deps.settings.privacy.target_epsilon
    return text + f"; no trained model yet, so training one first with epsilon {eps:g} (about a minute)."


def find_model(deps: Deps, source: str, conditions: list[str], epsilon: float | None) -> Any | None:
    """A saved model for this source (same content hash) whose conditions cover `conditions` and epsilon <= asked.

    A fitting model that fails its checks (missing or truncated weights, edited manifest) is NEVER
    skipped silently - that would train and charge the ledger again: when no intact fitting model
    exists, DamagedArtifactError names the damaged one, what is wrong and how to remove it. A model
    made for another version of the source (content hash or schema changed) is simply not a fit.
    """
    from synthehr.errors import DamagedArtifactError
    from synthehr.tools.engines.dpgan import ModelLoadError, TrainedGenerator

    chash = deps.catalog.content_hash(source)
    schema = deps.catalog.get(source)
    rows = deps.workspace.query("SELECT * FROM models WHERE source = ? ORDER BY created_at DESC, rowid DESC", (source,))
    damaged: list[tuple[str, str]] = []
    for row in rows:
        conds = json.loads(row["conditions_json"] or "[]")
        if not set(conditions) <= set(conds):
            continue
        if epsilon is not None and float(row["epsilon"]) > epsilon + 1e-12:
            continue
        manifest = json.loads(row["manifest_json"] or "{}")
        if manifest.get("extra", {}).get("source_content_hash") != chash:
            continue
        try:
            model = TrainedGenerator.load(row["path"], expected_schema=schema)
        except ModelLoadError as exc:
            if "different schema" in str(exc):
                continue  # made for an older schema of the source: not a fit, not damage
            damaged.append((row["id"], str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - unreadable weights (e.g. truncated safetensors) are damage
            damaged.append((row["id"], f"{row['path']}: cannot be read ({type(exc).__name__})"))
            continue
        return row["id"], model
    if damaged:
        model_id, what = damaged[0]
        raise DamagedArtifactError(
            f"model {model_id} is damaged: {what}. It was not replaced (training again would spend privacy "
            f"budget); remove it with `synthehr doctor --remove {model_id}`, then run the request again "
            f"(a new model is then trained and charged), or train one explicitly with `synthehr train {source}`")
    return None


# ---- the tool -----------------------------------------------------------------------------
def generate_cohort(deps: Deps, args: GenerateCohortArgs) -> ToolResult:
    from synthehr.tools.engines.dpgan.cohort import parse_filters, parse_proportions
    from synthehr.tools.train_generator import train_model

    t0 = time.perf_counter()
    settings = deps.settings
    n = args.n or settings.generation.default_rows
    if n > settings.generation.max_rows:
        raise ToolInputError(f"n={n} is above the limit of {settings.generation.max_rows} records per request "
                             f"(generation.max_rows); ask for fewer")
    if args.epsilon is not None and args.epsilon > settings.privacy.max_epsilon_per_request:
        raise ToolInputError(f"epsilon {args.epsilon:g} is above the limit of {settings.privacy.max_epsilon_per_request:g} "
                             f"per request (privacy.max_epsilon_per_request)")
    seed = settings.generation.seed if args.seed is None else args.seed
    profile = resolve_profile(args.condition)
    population, names_source = population_name(deps, args.population)
    source = pick_source(deps, profile, args.population if population is not None or names_source else None,
                         args.source)
    schema = deps.catalog.get(source)
    plan = cohort_plan(profile, schema)
    targets = population_targets(deps, profile, population)
    chosen, missing = map_observations(profile, schema, args.observations)
    filter_items = [f.model_dump() if isinstance(f, FilterSpec) else f for f in (args.filters or [])]
    filters = parse_filters(filter_items, schema)  # validates now (ToolInputError)
    strata = parse_proportions(args.proportions, schema)
    if targets is not None:  # the source can express the cells and the request can meet them: check before training
        from synthehr.tools.engines.population import plan_cells

        plan_cells(targets, schema, n, filters=filter_items, proportions=args.proportions)
    cols = schema.column_map()
    conditions = model_conditions(plan, schema)
    found = find_model(deps, source, conditions, args.epsilon)
    trained = False
    if found is None:
        # Train under the workspace lock, checking again once it is held: two first `generate` runs at
        # once train (and charge) one model; the second reuses it.
        with deps.workspace.lock():
            found = find_model(deps, source, conditions, args.epsilon)
            if found is None:
                eps = args.epsilon or settings.privacy.target_epsilon
                out = train_model(deps, source, eps, conditions=conditions, seed=seed,
                                  what=f"generate_cohort({profile.id})")
                model_id, model = out["summary"]["model_id"], out["model"]
                trained = True
    if found is not None:
        model_id, model = found
    run_id = new_id("run")
    dataset_id = new_id("ds")
    params = {"condition": profile.id, "n": n, "observations": args.observations, "population": args.population,
              "filters": [f.text() for f in filters], "proportions": args.proportions, "epsilon": args.epsilon,
              "seed": seed, "source": source, "model_id": model_id, "dataset_id": dataset_id}
    deps.workspace.insert("runs", {"id": run_id, "kind": "generate", "started_at": now_iso(), "status": "running",
                                   "session": deps.session.name, "params_json": params})
    try:
        pop_report = None
        if targets is not None:
            from synthehr.tools.engines.population import sample_to_targets

            frame, pop_report = sample_to_targets(model, targets, n, seed=seed, fixed=plan["fixed"],
                                                  filters=filter_items, proportions=args.proportions,
                                                  where=plan["where"])
        else:
            frame = model.sample(n, seed=seed, fixed=plan["fixed"], filters=filter_items,
                                 proportions=args.proportions, where=plan["where"])
        mask = plan["where"](frame)
        for f in filters:
            mask &= f.mask(frame)
        if len(frame) != n or not bool(mask.all()):  # a bug, never a user error
            raise RuntimeError("sampled records do not meet the cohort definition")
        keep: list[str] = []
        extra_cols = ([plan["cohort_column"]] if plan["cohort_column"] else []) + plan["rule_columns"] + \
            [f.column for f in filters] + [s.filters[0].column for g in strata for s in g]
        for c in [*DEMOGRAPHICS, *[o["column"] for o in chosen], *extra_cols]:
            if c in cols and c not in keep:
                keep.append(c)
        frame = frame[keep]
        set_on_purpose = [f.column for f in filters] + [s.filters[0].column for g in strata for s in g]
        if targets is not None:  # reweighted to the named population's public figures: not the source's mix
            set_on_purpose += list(DEMOGRAPHICS)
        comparison = source_comparison(model, frame, plan["fixed"], set_on_purpose)
        info = write_dataset(deps, dataset_id, run_id, model_id, model, profile, schema, source, frame, seed,
                             plan, filters, args.proportions, chosen, missing, population=pop_report,
                             cohort_fidelity=comparison)
    except BaseException as exc:
        deps.workspace.update_run(run_id, "failed", {"error": type(exc).__name__,
                                                     **({"message": str(exc)} if isinstance(exc, ToolInputError) else {})})
        raise
    stats = key_stats(frame)
    seconds = time.perf_counter() - t0
    result = {**info, "stats": stats, "trained_new_model": trained, "seconds": round(seconds, 1),
              "observations": chosen, "missing_observations": missing, "population": info["card"]["population"],
              "source_comparison": comparison}
    deps.workspace.update_run(run_id, "ok", {k: v for k, v in result.items() if k != "card"})
    deps.session.last_dataset = dataset_id
    deps.session.last_model = model_id
    deps.session.last_cohort = {"condition": profile.id, "source": source, "fixed": plan["fixed"],
                                "filters": [f.text() for f in filters], "proportions": args.proportions, "n": n,
                                "population": population,
                                "dataset_id": dataset_id}
    miss_txt = ""
    real_missing = [m for m in missing if m["name"] != "(more)"]
    if real_missing:
        miss_txt = (f" Not available in {source} (not generated): "
                    + ", ".join(m["label"] for m in real_missing[:8]) + ("..." if len(real_missing) > 8 else "") + ".")
    more = [m for m in missing if m["name"] == "(more)"]
    if more:
        miss_txt += f" {more[0]['label']}."
    text = (f"Wrote {n} synthetic {profile.name} records ({len(keep)} columns: {len(chosen)} observations + "
            f"demographics) to {info['files']['csv']} (also .parquet, data card card.md). Dataset id {dataset_id}. "
            f"Cohort: {profile.cohort.description.strip()} Source: {schema.meta.title} ({source}). "
            f"Privacy: epsilon {model.epsilon:.3g} (target {model.target_epsilon:g}), delta {model.delta:.2g}, "
            f"{model.accountant} accountant, model {model_id}{' (newly trained)' if trained else ' (reused)'}. "
            f"Key stats: {format_stats(stats)}.{miss_txt}{_population_sentence(pop_report)}"
            + (f" Source's DP-released figures (estimate): {format_stats(comparison['figures'])}."
               if comparison.get("figures") else ""))
    files = [info["files"][k] for k in ("csv", "parquet", "card_json", "card_md")]
    return ToolResult(text=text, data=result, files=files, **_typed(n, profile, schema, source, filters, model, trained,
                                                                     stats, chosen, missing, info["card"], comparison))


def document_title(doc_id: str) -> tuple[str, str]:
    """(title, url) of a packaged knowledge document; the id itself when there is none."""
    from synthehr.tools.store.profiles import document_paths, parse_document

    for path in document_paths():
        if Path(str(path)).stem == doc_id:
            try:
                meta, _ = parse_document(path)
                return meta.title, meta.url
            except Exception:  # noqa: BLE001 - a damaged document: the id still names it
                break
    return doc_id, ""


_OP_WORDS = {">=": "{v} or more", ">": "over {v}", "<=": "{v} or less", "<": "under {v}", "!=": "not {v}"}


def plain_filter(rule: str, schema: SourceSchema) -> str:
    """'age_years>=65' -> 'aged 65 or over'; 'sex=female' -> 'women only'; 'insulin_now=1' -> 'taking insulin now'."""
    m = re.match(r"^\s*(\w+)\s*(>=|<=|==|!=|=|>|<)\s*(.+?)\s*$", rule)
    if not m:
        return rule
    col, op, value = m.group(1), m.group(2), m.group(3).strip("'\"")
    info = schema.column_map().get(col)
    label = (info.label if info is not None else col.replace("_", " ")).lower()
    if col == "age_years":
        return {">=": f"aged {value} or over", ">": f"older than {value}", "<=": f"aged {value} or under",
                "<": f"younger than {value}"}.get(op, f"age {op} {value}")
    if col == "sex" and op in ("=", "=="):
        return {"female": "women only", "male": "men only"}.get(value, f"sex {value}")
    if op in ("=", "==") and value.lower() in ("1", "true", "yes"):
        return label
    if op in ("=", "==") and value.lower() in ("0", "false", "no"):
        return f"not: {label}"
    if op in ("=", "=="):
        return f"{label}: {value}"
    return f"{label} " + _OP_WORDS[op].format(v=value)


def short_source(meta: Any) -> str:
    """'NHANES 2017-2018': the acronym its knowledge document's title gives in parentheses, plus the years;
    the full title where there is none."""
    if getattr(meta, "doc_id", None):
        title, _ = document_title(meta.doc_id)
        m = re.search(r"\(([A-Z][A-Za-z0-9&-]{1,12})\)", title)
        if m:
            return f"{m.group(1)} {meta.years}".strip()
    return meta.title


_STAT_FIGURES = {"mean_age_years": ("mean age", "years"), "pct_female": ("women", "%"),
                 "mean_hba1c_pct": ("mean HbA1c", "%"), "mean_bmi_kg_m2": ("mean BMI", "kg/m2"),
                 "mean_sbp_mmhg": ("mean systolic blood pressure", "mmHg")}


# key_stats figure -> (column, how its source figure is read from the comparison)
_STAT_SOURCE = {"mean_age_years": ("age_years", "mean"), "pct_female": ("sex", "female"),
                "mean_hba1c_pct": ("hba1c_pct", "mean"), "mean_bmi_kg_m2": ("bmi_kg_m2", "mean"),
                "mean_sbp_mmhg": ("sbp_mmhg", "mean")}
SOURCE_LABEL = "source (DP estimate)"


def source_comparison(model: Any, frame: pd.DataFrame, fixed: dict[str, Any], set_on_purpose: list[str]) -> dict[str, Any]:
    """The cohort's key figures and demographic mix against the source's DP-released figures for the same
    cells (synthehr.tools.engines.source_figures): post-processing of what the model released, never the
    real rows, and nothing charged. Columns the request set on purpose (filters, proportions, population
    targets) and the cohort's fixed columns are not compared."""
    from synthehr.tools.engines.source_figures import compare_with_source, dp_source_figures

    src = dp_source_figures(model, fixed)
    means = [c for c, how in _STAT_SOURCE.values() if how == "mean"]
    out = compare_with_source(frame, src, mix_columns=DEMOGRAPHICS, mean_columns=means,
                              skip=set(set_on_purpose) | set(fixed))
    female = out["mix"].get("sex", {}).get("source_share", {}).get("female")
    out["figures"] = {k: (round(100 * female, 1) if how == "female" else round(out["means"][col]["source_dp"], 1))
                      for k, (col, how) in _STAT_SOURCE.items()
                      if (how == "female" and female is not None) or (how == "mean" and col in out["means"])}
    out["filtered"] = bool(set_on_purpose)
    skipped = set(set_on_purpose) | set(fixed)
    out["too_noisy"] = [c for c in dict.fromkeys([*DEMOGRAPHICS, *means])
                        if c in src.get("too_noisy", []) and c not in skipped and c in frame.columns]
    return out


_COLUMN_WORDS = {"age_years": "age", "sex": "sex", "race_ethnicity": "race/ethnicity", "hba1c_pct": "HbA1c",
                 "bmi_kg_m2": "BMI", "sbp_mmhg": "systolic blood pressure"}


def _column_words(col: str, schema: SourceSchema) -> str:
    if col in _COLUMN_WORDS:
        return _COLUMN_WORDS[col]
    info = schema.column_map().get(col)
    label = info.label if info is not None and info.label else col.replace("_", " ")
    return label if any(ch.isupper() for ch in label[1:]) else label.lower()


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def comparison_sentence(comparison: dict[str, Any] | None, schema: SourceSchema) -> str:
    """One or two plain sentences: how the cohort's mix compares with the source's DP-released figures, and
    which of the source's figures were too noisy to compare with."""
    if not comparison:
        return ""
    out: list[str] = []
    mix = comparison.get("mix") or {}
    if mix:
        what = _and([_column_words(c, schema) for c in mix])
        worst_col = max(mix, key=lambda c: mix[c]["max_gap_points"])
        worst = mix[worst_col]
        gap = worst["max_gap_points"]
        scope = (" (figures for everyone with the condition; the request's filters or targets change the cohort on "
                 "purpose)" if comparison.get("filtered") else "")
        if gap <= 3:
            pts = max(1, math.ceil(gap))
            out.append(f"The {what} mix matches the source's privacy-protected (DP) figures{scope} within {pts} "
                       f"percentage point{'s' if pts > 1 else ''}.")
        else:
            group = (f"age {worst['largest']} years" if worst_col == "age_years" else str(worst["largest"])
                     if worst_col == "sex" else f"{_column_words(worst_col, schema)} {worst['largest']}")
            detail = "" if worst_col == "sex" else (  # the share of women is among the key figures
                f" ({group}: {worst['synthetic_pct']:g}% here vs {worst['source_pct']:g}% in the source)")
            out.append(f"The {what} mix differs from the source's privacy-protected (DP) figures{scope} by up to "
                       f"{gap:g} percentage points{detail}.")
    noisy = comparison.get("too_noisy") or []
    if noisy:
        out.append(f"The source's privacy-protected figures for {_and([_column_words(c, schema) for c in noisy])} "
                   f"are too noisy at this privacy level to compare with.")
    return " ".join(out)


def _typed(n: int, profile: Any, schema: SourceSchema, source: str, filters: list, model: Any, trained: bool,
           stats: dict[str, float], chosen: list[dict], missing: list[dict], card: dict[str, Any],
           comparison: dict[str, Any] | None = None) -> dict[str, Any]:
    """The typed result fields the answer writer reads (plain clinical language, no tool jargon). Each key
    figure carries the source's DP-released value as its `reference` where the model released one."""
    title = short_source(schema.meta)
    where = f" ({', '.join(plain_filter(f.text(), schema) for f in filters)})" if filters else ""
    summary = (f"I generated {n:,} synthetic patients with {profile.name}{where} from {title}, "
               f"with {len(chosen)} observations besides age, sex and race/ethnicity.")
    g_title, g_url = document_title(profile.guideline)
    definition = " ".join(profile.cohort.description.split())
    statements = [f"Cohort definition ({g_title}): {definition}"]
    mix = comparison_sentence(comparison, schema)
    if mix:
        statements.append(mix)
    refs = (comparison or {}).get("figures", {})
    figures = [Figure(label=_STAT_FIGURES[k][0], value=v, unit=_STAT_FIGURES[k][1], reference=refs.get(k),
                      reference_label=SOURCE_LABEL if k in refs else "")
               for k, v in stats.items() if k in _STAT_FIGURES]
    gone = [Missing(item=m["label"], reason=f"{title} does not measure it") for m in missing if m["name"] != "(more)"]
    gone += [Missing(item=m["label"], reason="the source has no further observations of this condition")
             for m in missing if m["name"] == "(more)"]
    privacy = (f"The generator was {'trained for this request' if trained else 'trained earlier'} with differential "
               f"privacy (epsilon {model.epsilon:.2g}, delta {model.delta:.1g}), so no real patient can be singled "
               f"out from these records.")
    sources = [SourceRef(title=schema.meta.title, url=schema.meta.url or ""), SourceRef(title=g_title, url=g_url)]
    return {"summary": summary, "statements": statements, "figures": figures, "missing": gone, "privacy": privacy,
            "sources": sources}


def key_stats(frame: pd.DataFrame) -> dict[str, float]:
    out: dict[str, float] = {}
    if "age_years" in frame:
        out["mean_age_years"] = round(float(pd.to_numeric(frame["age_years"]).astype(float).mean()), 1)
    if "sex" in frame:
        out["pct_female"] = round(float((frame["sex"].astype(object) == "female").mean() * 100), 1)
    for col, key in (("hba1c_pct", "mean_hba1c_pct"), ("bmi_kg_m2", "mean_bmi_kg_m2"), ("sbp_mmhg", "mean_sbp_mmhg")):
        if col in frame and len(out) < 4:
            v = pd.to_numeric(frame[col]).astype(float)
            if v.notna().any():
                out[key] = round(float(v.mean()), 1)
    return out


def format_stats(stats: dict[str, float]) -> str:
    names = {"mean_age_years": ("mean age", " y"), "pct_female": ("female", "%"), "mean_hba1c_pct": ("mean HbA1c", "%"),
             "mean_bmi_kg_m2": ("mean BMI", " kg/m2"), "mean_sbp_mmhg": ("mean SBP", " mmHg")}
    return ", ".join(f"{names[k][0]} {v:g}{names[k][1]}" for k, v in stats.items() if k in names) or "n/a"


def file_frame(frame: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """The records as written to the files: a 0/1 column with missing values is a nullable integer, so the
    CSV says 1 / 0 / empty rather than 1.0 / 0.0 (a float column is what pandas makes of 0/1 plus missing)."""
    out = frame.copy()
    for c in schema.columns:
        if c.type is ColumnType.binary and c.name in out:
            v = pd.to_numeric(out[c.name], errors="coerce")
            if v.notna().any() and v.dropna().isin([0, 1]).all() and v.notna().sum() == out[c.name].notna().sum():
                out[c.name] = v.round().astype("Int64")
    return out


def write_dataset(deps: Deps, dataset_id: str, run_id: str, model_id: str, model: Any, profile: Any,
                  schema: SourceSchema, source: str, frame: pd.DataFrame, seed: int, plan: dict, filters: list,
                  proportions: Any, chosen: list[dict], missing: list[dict],
                  population: dict[str, Any] | None = None,
                  cohort_fidelity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the four files into a temporary folder, then rename it into place (all or nothing)."""
    from synthehr.tools.engines.dpgan.model import library_versions

    final = deps.workspace.datasets_dir / dataset_id
    tmp = deps.workspace.datasets_dir / f".{dataset_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = file_frame(frame, schema)
        csv_bytes = files.to_csv(index=False).encode("utf-8")
        (tmp / "data.csv").write_bytes(csv_bytes)
        files.to_parquet(tmp / "data.parquet", index=False)
        meta = schema.meta
        versions = library_versions()
        shared_facts = card_privacy_facts(deps, source, model_id, model, frame, plan["fixed"], proportions)
        card = {
            "dataset_id": dataset_id,
            "created_at": now_iso(),
            "source": {"name": source, "title": meta.title, "publisher": meta.publisher, "url": meta.url,
                       "licence": meta.licence, "years": meta.years, "citation": meta.citation},
            "condition": {"id": profile.id, "name": profile.name, "definition": profile.definition.strip(),
                          "guideline": profile.guideline, "cohort_description": profile.cohort.description.strip(),
                          "rules": plan["rules"]},
            "cohort": {"fixed": plan["fixed"], "filters": [f.text() for f in filters], "proportions": proportions},
            "population": _population_card(population),
            "model": {"id": model_id, "epsilon": model.epsilon, "delta": model.delta, "accountant": model.accountant,
                      "target_epsilon": model.target_epsilon, "seed": model.seed,
                      "epochs": model.hyperparameters.get("epochs"), "conditions": model.conditions,
                      "charges": model.charges},
            **shared_facts,
            # The cohort against the source's DP-released figures for the same cells (post-processing, free).
            "cohort_fidelity": cohort_fidelity,
            "n_rows": len(frame),
            "seed": seed,
            "columns": [_column_card(schema, c) for c in frame.columns],
            "observations": chosen,
            "missing_observations": missing,
            "files": {"csv": str(final / "data.csv"), "parquet": str(final / "data.parquet")},
            "software": {"synthehr": versions["synthehr"], "torch": versions["torch"], "opacus": versions["opacus"],
                         "python": versions["python"]},
            "guidelines": sorted(profile.guideline_ids()),
            "hashes": {"csv_sha256": hashlib.sha256(csv_bytes).hexdigest(),
                       "source_content_hash": deps.catalog.content_hash(source)},
        }
        atomic_write_text(tmp / "card.json", json.dumps(card, indent=2, default=str))
        atomic_write_text(tmp / "card.md", card_markdown(card))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {"csv": str(final / "data.csv"), "parquet": str(final / "data.parquet"),
             "card_json": str(final / "card.json"), "card_md": str(final / "card.md")}
    deps.workspace.insert("datasets", {
        "id": dataset_id, "run_id": run_id, "model_id": model_id, "source": source, "condition": profile.id,
        "n_rows": len(frame), "dir": str(final), "epsilon": model.epsilon, "delta": model.delta,
        "created_at": card["created_at"], "session": deps.session.name, "card_json": card})
    _index_lineage(deps, dataset_id)
    return {"dataset_id": dataset_id, "dir": str(final), "files": files, "n_rows": len(frame), "card": card,
            "source": source, "condition": profile.id, "model_id": model_id, "epsilon": model.epsilon,
            "delta": model.delta, "accountant": model.accountant}


def population_name(deps: Deps, population: str | None) -> tuple[str | None, bool]:
    """(the population with public figures that the request names or None, whether it names a source instead).

    None means the cohort mirrors the source sample: no population named, "the source sample", or a
    registered source ("NHANES"), which the card then says. Any other population without figures in the
    knowledge base is a ToolInputError listing the populations with figures and the registered sources,
    never a silent fall-back to the source sample.
    """
    from synthehr.tools.engines.population import resolve_population

    try:
        return resolve_population(population), False
    except ToolInputError as exc:
        p = _norm(population or "")
        for n in deps.catalog.names():
            if p and f" {p} " in f" {_norm(n + ' ' + deps.catalog.get(n).meta.title)} ":
                return None, True
        listing = "; ".join(f"{n} ({deps.catalog.get(n).meta.population})" for n in deps.catalog.names())
        raise ToolInputError(f"{exc}; registered sources: {listing}") from None


def population_targets(deps: Deps, profile: Any, population: str | None) -> Any | None:
    """Target shares for people with the profile's condition in `population` (ToolInputError when none)."""
    from synthehr.tools.engines.population import load_targets

    return None if population is None else load_targets(population, profile.id)


def _population_card(report: dict[str, Any] | None) -> dict[str, Any]:
    from synthehr.tools.engines.population import SOURCE_SAMPLE_NOTE

    if report is None:
        return {"applied": False, "note": SOURCE_SAMPLE_NOTE}
    return {"applied": True, **report}


def _population_markdown(card: dict[str, Any] | None) -> list[str]:
    from synthehr.tools.engines.population import report_markdown

    return report_markdown(card if card and card.get("applied") else None)


def _population_sentence(report: dict[str, Any] | None) -> str:
    from synthehr.tools.engines.population import report_sentence

    return report_sentence(report)


def card_privacy_facts(deps: Deps, source: str, model_id: str, model: Any, frame: pd.DataFrame, fixed: dict,
                       proportions: Any) -> dict[str, Any]:
    """What the shareable card says about fidelity, the ledger and the custodian report.

    fidelity: the synthetic records against the model's DP-released frequencies (post-processing, free);
    privacy_ledger: the source's budget as charged now (a failed run's charge stays spent);
    custodian_report: where the model's report on real records lives; its figures (non-private) are
    copied only when privacy.custodian_reports allows it for this source, marked as such."""
    from synthehr.tools.engines.quality import CUSTODIAN_WARNING, custodian_allowed, dp_fidelity
    from synthehr.tools.privacy_budget import FAILED_NOTE, budget_report

    ledger = budget_report(deps, source)[0]
    custodian: dict[str, Any] = {"kind": "custodian report", "location": f"models/{model_id}/quality.md (workspace only, "
                                 "not part of this data set)", "warning": CUSTODIAN_WARNING}
    if custodian_allowed(deps, source):
        row = deps.workspace.get("models", "id", model_id)
        qfile = Path(row["path"]) / "quality.json" if row and row.get("path") else None
        if qfile is not None and qfile.is_file():
            custodian["summary"] = json.loads(qfile.read_text(encoding="utf-8")).get("summary")
        custodian["shown"] = "summary" in custodian
    else:
        custodian["shown"] = False
        custodian["note"] = "withheld from this card: the user is not the data custodian (privacy.custodian_reports)"
    return {
        "fidelity": dp_fidelity(model, frame, fixed, proportions),
        "privacy_ledger": {"source": source, "budget_epsilon": ledger["budget_epsilon"],
                           "spent_epsilon": ledger["spent_epsilon"], "left_epsilon": ledger["left_epsilon"],
                           "budget_delta": ledger["budget_delta"], "spent_delta": ledger["spent_delta"],
                           "charges": len(ledger["charges"]), "failed_run_charges": ledger["failed_run_charges"],
                           "note": FAILED_NOTE},
        "custodian_report": custodian,
    }


def _index_lineage(deps: Deps, dataset_id: str) -> None:
    """Index the new data card in the knowledge index, so "which sources was this based on?" finds this run.

    The data set is already written and recorded; if indexing fails, explain_provenance indexes the
    card itself on first use, so the failure is logged (no data in the message) rather than raised.
    """
    from synthehr.tools.engines.knowledge_index import index_dataset

    try:
        index_dataset(deps, dataset_id)
    except Exception as exc:  # noqa: BLE001 - the data set stands; lineage is re-indexed lazily
        logging.getLogger(__name__).warning("could not index the data card of %s (%s)", dataset_id, type(exc).__name__)


def _column_card(schema: SourceSchema, name: str) -> dict[str, Any]:
    c = schema.column(name)
    return {"name": c.name, "label": c.label, "unit": c.unit, "type": c.type.value, "loinc": c.loinc}


def card_markdown(card: dict[str, Any]) -> str:
    s, m, cond = card["source"], card["model"], card["condition"]
    lines = [
        f"# Data card: {card['dataset_id']}",
        "",
        f"Synthetic records: **{card['n_rows']}** patients with **{cond['name']}** (differentially private; "
        "no row is a real person).",
        "",
        "## Cohort",
        f"- Definition: {cond['cohort_description']}",
        f"- Guideline: {cond['guideline']}",
        f"- Fixed values: {card['cohort']['fixed'] or 'none'}; filters: {', '.join(card['cohort']['filters']) or 'none'}; "
        f"proportions: {card['cohort']['proportions'] or 'as in the source'}",
        "",
        "## Source",
        f"- {s['title']} ({s['name']}), {s['years']}; publisher: {s['publisher']}",
        f"- Licence: {s['licence']}; URL: {s['url']}",
        f"- Citation: {s['citation']}",
        "",
        "## Privacy and model",
        f"- Model {m['id']}: DP conditional GAN (discriminator trained with DP-SGD, Opacus), conditioned on "
        f"{', '.join(m['conditions'])}",
        f"- epsilon = {m['epsilon']:.4g} (target {m['target_epsilon']:g}), delta = {m['delta']:.3g}, "
        f"accountant: {m['accountant']}, seed {m['seed']}, epochs {m['epochs']}",
        "- Charges: " + "; ".join(f"{c['mechanism']} epsilon {c['epsilon']:.4g}" for c in m["charges"]),
    ]
    led = card.get("privacy_ledger")
    if led:
        lines.append(f"- Ledger of {led['source']}: epsilon spent {led['spent_epsilon']:.4g} of {led['budget_epsilon']:g} "
                     f"(left {led['left_epsilon']:.4g}) in {led['charges']} charge(s)"
                     + (f", {led['failed_run_charges']} of them by failed runs" if led["failed_run_charges"] else "")
                     + f"; {led['note']}. See `synthehr budget`.")
    fid = card.get("fidelity")
    if fid:
        lines += ["", "## Fidelity against DP-released frequencies",
                  f"- Reference: {fid['reference']}; privacy cost: {fid['privacy_cost']}.",
                  "- Mean 1 - TVD: " + ("n/a" if fid["mean_tvd_complement"] is None else f"{fid['mean_tvd_complement']:.3f}")]
        for name, v in fid["columns"].items():
            if v.get("scored"):
                shares = ", ".join(f"{k} {v['synthetic_share'][k]:.2f} vs {v['dp_reference_share'][k]:.2f}"
                                   for k in v["synthetic_share"])
                lines.append(f"- {name}: 1 - TVD {v['tvd_complement']:.3f} (synthetic vs DP share: {shares})")
            else:
                lines.append(f"- {name}: not scored ({v['reason']})")
        lines.append(f"- {fid['note']}")
    cf = card.get("cohort_fidelity")
    if cf and (cf.get("mix") or cf.get("means") or cf.get("too_noisy")):
        lines += ["", "## Cohort vs the source (DP-released figures)",
                  f"- Reference: {cf['reference']}; privacy cost: {cf['privacy_cost']}."]
        for col, m in cf.get("mix", {}).items():
            lines.append(f"- {col}: largest gap {m['max_gap_points']} points ({m['largest']}: {m['synthetic_pct']} % "
                         f"synthetic vs {m['source_pct']} % source)")
        for col, m in cf.get("means", {}).items():
            lines.append(f"- mean {col}: {m['synthetic']} synthetic vs {m['source_dp']} source (DP estimate, bins of "
                         f"{m['bin_width']:g})")
        if cf.get("too_noisy"):
            lines.append(f"- Too noisy to compare at this epsilon: {', '.join(cf['too_noisy'])}.")
        if cf.get("skipped"):
            lines.append(f"- Not compared (set by the request): {', '.join(cf['skipped'])}.")
    cr = card.get("custodian_report")
    if cr:
        lines += ["", "## Custodian report", f"- {cr['location']}."]
        if cr.get("shown") and cr.get("summary"):
            lines.append(f"- **{cr['warning']}.** Shown because privacy.custodian_reports allows it for this source:")
            lines += [f"  - {k}: {v}" for k, v in cr["summary"].items() if v is not None]
        else:
            lines.append(f"- Not shown here ({cr.get('note') or 'no report'}); it {cr['warning']}.")
    lines += [
        "",
        "## Columns",
        "| column | label | unit | type | LOINC |",
        "|---|---|---|---|---|",
    ]
    for c in card["columns"]:
        lines.append(f"| {c['name']} | {c['label'] or ''} | {c['unit'] or ''} | {c['type']} | {c['loinc'] or ''} |")
    if card["missing_observations"]:
        lines += ["", "## Requested but not available (not generated)"]
        lines += [f"- {o['label']}: {o['reason']}" for o in card["missing_observations"]]
    lines += ["", *_population_markdown(card.get("population"))]
    lines += ["", "## Files", f"- {card['files']['csv']}", f"- {card['files']['parquet']}", "",
              f"Guidelines: {', '.join(card['guidelines'])}. Software: " +
              ", ".join(f"{k} {v}" for k, v in card["software"].items()) + ".",
              f"CSV sha256: {card['hashes']['csv_sha256']}", ""]
    return "\n".join(lines)


SPEC = ToolSpec(
    name="generate_cohort",
    description=("Generate differentially private synthetic patient records for a condition (e.g. type 2 diabetes): "
                 "n patients, the condition's most important observations, optional filters (age_years>=65) and "
                 "target proportions (sex=female: 0.4). Writes CSV, Parquet and a data card; returns file paths, "
                 "the privacy budget used and key statistics."),
    args_model=GenerateCohortArgs,
    func=generate_cohort,
    examples=("generate 2000 Type 2 diabetes patients EHR data with 20 important diabetes observations based on the US population",
              "make 500 synthetic diabetics aged 65 or over, 40% women"),
    router_examples=(
        "generate 500 patients with type 2 diabetes", "create a synthetic cohort of heart failure patients",
        "simulate EHR data for COPD patients in the US", "I need synthetic records of people with chronic kidney disease",
        "make a fake dataset of hypertensive adults with 10 observations", "produce synthetic diabetic patients aged over 50",
        "make them older", "only women", "same cohort but only men", "now do it again with 300 patients",
        "generate synthetic EHR data based on the US population",
        "build me a synthetic data set with the most important observations", "generate 400 patients with epsilon 0.5",
        "create a heart failure cohort with a privacy budget of epsilon 2", "synthesize records for people with kidney disease",
        "generate diabetics on insulin", "create 300 hypertensive smokers",
    ),
    few_shot={
        "request": "create 300 synthetic hypertension patients with 8 key observations from the US population",
        "thought": "The user wants a synthetic cohort: generate it.",
        "args": {"condition": "hypertension", "n": 300, "observations": 8, "population": "US"},
        "observation": "Wrote 300 synthetic Hypertension records to datasets/ds-example-1/data.csv. Dataset id "
                       "ds-example-1. Source: NHANES 2017-2018. Privacy: epsilon 1.0. Key stats: mean SBP 139 mmHg.",
        "final": "I generated 300 synthetic hypertension patients (datasets/ds-example-1/data.csv, epsilon 1.0); "
                 "mean systolic BP 139 mmHg. Source: NHANES 2017-2018.",
    },
    describe=describe,
    router_cues=(
        r'\b(?:generate|create|simulate|synthesi[sz]e|produce|build|make|give me|need|want)\b.{0,60}\b(?:patie'
        r'nts?|records?|cohort|people|data ?set|ehr|adults|women|men|diabetics)\b|\b(?:older|younger|only (?:w'
        r'omen|men|females|males)|restrict|limit it|narrow)\b'
    ),
    router_requires=(
        r'\b(?:generate|create|simulate|synthesi[sz]e|produce|build|make|give|need|want|get|sample|fake|synthe'
        r'tic|cohort|again|same|instead|only|older|younger|restrict|limit|women|men|females?|males?|aged?|over'
        r'|under)\b|\d'
    ),
)


# ---- any registered source, without a condition profile ---------------------------------------
class _SourceProfile:
    """Stands in for a condition profile when a user source is sampled as a whole (`generate --source`)."""

    def __init__(self, source: str, where: list[str]):
        self.id = f"source:{source}"
        self.name = f"{source} records"
        self.definition = "all records of the source" + (f" meeting {' and '.join(where)}" if where else "")
        self.guideline = None
        self.cohort = type("Cohort", (), {"description": self.definition})()

    def guideline_ids(self) -> set[str]:
        return set()


def generate_from_source(deps: Deps, source: str, n: int | None = None, *, where: list[str] | None = None,
                         model_id: str | None = None, seed: int | None = None,
                         epsilon: float | None = None) -> ToolResult:
    """Sample `n` synthetic records of any registered source (no condition profile needed).

    where: filters like "col=value" / "age_years>=65"; model_id: a saved model of this source (else the
    newest fitting one, else a new one trained at `epsilon` or the configured target, charged).
    """
    from synthehr.tools.engines.dpgan import ModelLoadError, TrainedGenerator
    from synthehr.tools.engines.dpgan.cohort import parse_filters
    from synthehr.tools.train_generator import train_model

    t0 = time.perf_counter()
    settings = deps.settings
    n = n or settings.generation.default_rows
    if n > settings.generation.max_rows:
        raise ToolInputError(f"n={n} is above the limit of {settings.generation.max_rows} records per request "
                             f"(generation.max_rows); ask for fewer")
    seed = settings.generation.seed if seed is None else int(seed)
    schema = deps.catalog.get(source)  # ToolInputError listing the sources
    where = list(where or [])
    filters = parse_filters(where, schema)
    trained = False
    if model_id:
        row = deps.workspace.get("models", "id", model_id)
        if row is None or row.get("source") != source:
            known = [r["id"] for r in deps.workspace.query("SELECT id FROM models WHERE source = ?", (source,))]
            raise ToolInputError(f"no model '{model_id}' for {source}; models of {source}: {', '.join(known) or 'none'}")
        try:
            model = TrainedGenerator.load(row["path"], expected_schema=schema)
        except (ModelLoadError, FileNotFoundError) as exc:
            raise ToolInputError(str(exc)) from None
    else:
        found = find_model(deps, source, [], epsilon)
        if found is None:
            out = train_model(deps, source, epsilon or settings.privacy.target_epsilon, seed=seed,
                              what=f"generate --source {source}")
            model_id, model, trained = out["summary"]["model_id"], out["model"], True
        else:
            model_id, model = found
    run_id, dataset_id = new_id("run"), new_id("ds")
    deps.workspace.insert("runs", {"id": run_id, "kind": "generate", "started_at": now_iso(), "status": "running",
                                   "session": deps.session.name,
                                   "params_json": {"source": source, "n": n, "where": where, "seed": seed,
                                                   "model_id": model_id, "dataset_id": dataset_id}})
    profile = _SourceProfile(source, [f.text() for f in filters])
    plan = {"rules": [], "fixed": {}}
    try:
        frame = model.sample(n, seed=seed, filters=where)
        if len(frame) != n:  # a bug, never a user error
            raise RuntimeError("the sampler returned the wrong number of records")
        info = write_dataset(deps, dataset_id, run_id, model_id, model, profile, schema, source, frame, seed,
                             plan, filters, None, [], [])
    except BaseException as exc:
        deps.workspace.update_run(run_id, "failed", {"error": type(exc).__name__,
                                                     **({"message": str(exc)} if isinstance(exc, ToolInputError) else {})})
        raise
    result = {**{k: v for k, v in info.items() if k != "card"}, "where": [f.text() for f in filters],
              "trained_new_model": trained, "seconds": round(time.perf_counter() - t0, 1)}
    deps.workspace.update_run(run_id, "ok", result)
    deps.session.last_dataset, deps.session.last_model = dataset_id, model_id
    text = (f"Wrote {n} synthetic records of {source}" + (f" with {' and '.join(result['where'])}" if where else "")
            + f" to {info['files']['csv']} (also .parquet, data card card.md). Dataset id {dataset_id}. Privacy: "
            f"epsilon {model.epsilon:.3g} (target {model.target_epsilon:g}), model {model_id}"
            f"{' (newly trained)' if trained else ' (reused)'}.")
    return ToolResult(text=text, data=result, files=[info["files"][k] for k in ("csv", "parquet", "card_json", "card_md")])
