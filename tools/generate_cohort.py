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
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from synthehr.tools.base import ToolInputError, ToolResult, ToolSpec
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

    condition: str = Field(description="The condition of the cohort in plain words, e.g. 'type 2 diabetes'.")
    n: int | None = Field(default=None, gt=0, description="Number of synthetic patients (records) to generate.")
    observations: int | list[str] | None = Field(
        default=None, description="How many of the condition's most important observations to include (e.g. 20), "
                                  "or a list of observation names (e.g. ['hba1c', 'bmi']).")
    population: str | None = Field(default=None, description="Population the data should come from, e.g. 'US'.")
    filters: list[str | FilterSpec] | None = Field(
        default=None, description="Extra cohort filters, e.g. ['age_years>=65', 'hba1c_pct>=9'].")
    proportions: dict[str, float] | list[str] | None = Field(
        default=None, description="Target shares, e.g. {'sex=female': 0.4, 'age_years>=65': 0.6}.")
    epsilon: float | None = Field(default=None, gt=0, description="Privacy budget epsilon if a new generator must be trained (default from config).")
    seed: int | None = Field(default=None, description="Random seed (same seed, same records).")
    source: str | None = Field(default=None, description="Registered data source to use (overrides population).")


# ---- condition, source, cohort ------------------------------------------------------------
def resolve_profile(condition: str) -> Any:
    from synthehr.tools.store.profiles import ProfileNotFound, load_profiles, resolve_condition

    try:
        return resolve_condition(condition, load_profiles())
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
def find_model(deps: Deps, source: str, conditions: list[str], epsilon: float | None) -> Any | None:
    """A saved model for this source (same content hash) whose conditions cover `conditions` and epsilon <= asked."""
    from synthehr.tools.engines.dpgan import ModelLoadError, TrainedGenerator

    chash = deps.catalog.content_hash(source)
    schema = deps.catalog.get(source)
    rows = deps.workspace.query("SELECT * FROM models WHERE source = ? ORDER BY created_at DESC, rowid DESC", (source,))
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
        except (ModelLoadError, FileNotFoundError, KeyError, ValueError):
            continue
        return row["id"], model
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
    source = pick_source(deps, profile, args.population, args.source)
    schema = deps.catalog.get(source)
    plan = cohort_plan(profile, schema)
    chosen, missing = map_observations(profile, schema, args.observations)
    filter_items = [f.model_dump() if isinstance(f, FilterSpec) else f for f in (args.filters or [])]
    filters = parse_filters(filter_items, schema)  # validates now (ToolInputError)
    strata = parse_proportions(args.proportions, schema)
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
    found = find_model(deps, source, conditions, args.epsilon)
    trained = False
    if found is None:
        eps = args.epsilon or settings.privacy.target_epsilon
        out = train_model(deps, source, eps, conditions=conditions, seed=seed, what=f"generate_cohort({profile.id})")
        model_id, model = out["summary"]["model_id"], out["model"]
        trained = True
    else:
        model_id, model = found
    run_id = new_id("run")
    dataset_id = new_id("ds")
    params = {"condition": profile.id, "n": n, "observations": args.observations, "population": args.population,
              "filters": [f.text() for f in filters], "proportions": args.proportions, "epsilon": args.epsilon,
              "seed": seed, "source": source, "model_id": model_id, "dataset_id": dataset_id}
    deps.workspace.insert("runs", {"id": run_id, "kind": "generate", "started_at": now_iso(), "status": "running",
                                   "session": deps.session.name, "params_json": params})
    try:
        frame = model.sample(n, seed=seed, fixed=plan["fixed"], filters=filter_items, proportions=args.proportions,
                             where=plan["where"])
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
        info = write_dataset(deps, dataset_id, run_id, model_id, model, profile, schema, source, frame, seed,
                             plan, filters, args.proportions, chosen, missing)
    except BaseException as exc:
        deps.workspace.update_run(run_id, "failed", {"error": type(exc).__name__,
                                                     **({"message": str(exc)} if isinstance(exc, ToolInputError) else {})})
        raise
    stats = key_stats(frame)
    seconds = time.perf_counter() - t0
    result = {**info, "stats": stats, "trained_new_model": trained, "seconds": round(seconds, 1),
              "observations": chosen, "missing_observations": missing}
    deps.workspace.update_run(run_id, "ok", {k: v for k, v in result.items() if k != "card"})
    deps.session.last_dataset = dataset_id
    deps.session.last_model = model_id
    deps.session.last_cohort = {"condition": profile.id, "source": source, "fixed": plan["fixed"],
                                "filters": [f.text() for f in filters], "proportions": args.proportions, "n": n,
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
            f"Key stats: {format_stats(stats)}.{miss_txt}")
    files = [info["files"][k] for k in ("csv", "parquet", "card_json", "card_md")]
    return ToolResult(text=text, data=result, files=files)


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


def write_dataset(deps: Deps, dataset_id: str, run_id: str, model_id: str, model: Any, profile: Any,
                  schema: SourceSchema, source: str, frame: pd.DataFrame, seed: int, plan: dict, filters: list,
                  proportions: Any, chosen: list[dict], missing: list[dict]) -> dict[str, Any]:
    """Write the four files into a temporary folder, then rename it into place (all or nothing)."""
    from synthehr.tools.engines.dpgan.model import library_versions

    final = deps.workspace.datasets_dir / dataset_id
    tmp = deps.workspace.datasets_dir / f".{dataset_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        csv_bytes = frame.to_csv(index=False).encode("utf-8")
        (tmp / "data.csv").write_bytes(csv_bytes)
        frame.to_parquet(tmp / "data.parquet", index=False)
        meta = schema.meta
        versions = library_versions()
        card = {
            "dataset_id": dataset_id,
            "created_at": now_iso(),
            "source": {"name": source, "title": meta.title, "publisher": meta.publisher, "url": meta.url,
                       "licence": meta.licence, "years": meta.years, "citation": meta.citation},
            "condition": {"id": profile.id, "name": profile.name, "definition": profile.definition.strip(),
                          "guideline": profile.guideline, "cohort_description": profile.cohort.description.strip(),
                          "rules": plan["rules"]},
            "cohort": {"fixed": plan["fixed"], "filters": [f.text() for f in filters], "proportions": proportions},
            "model": {"id": model_id, "epsilon": model.epsilon, "delta": model.delta, "accountant": model.accountant,
                      "target_epsilon": model.target_epsilon, "seed": model.seed,
                      "epochs": model.hyperparameters.get("epochs"), "conditions": model.conditions,
                      "charges": model.charges},
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
