"""Tool: train a differentially private conditional GAN on a registered data source.

Order of operations (privacy first):
  1. validate the request (epsilon within privacy.max_epsilon_per_request, conditions valid);
  2. check the source's budget, then charge the FULL target (epsilon, delta) to the ledger as two
     lines - the DP preprocessing part and the DP-SGD part - BEFORE any real record is loaded;
  3. load the records, split off a holdout (never trained on) by seed;
  4. train, save the model (safetensors + manifest) into <workspace>/models/<model_id>/;
  5. if synthehr.tools.engines.quality is installed, write the custodian report (quality report on the
     holdout: NON-private statistics of real records) into the model folder. The tool's answer names it
     and repeats its flags only when privacy.custodian_reports allows it for this source.
The model row records the epsilon actually spent (<= the charged target).
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from synthehr.tools.base import ToolInputError, ToolResult, ToolSpec
from synthehr.tools.deps import Deps
from synthehr.tools.engines.dpgan.privacy import default_delta, split_budget
from synthehr.tools.store.schema import ColumnType, SourceSchema
from synthehr.tools.store.workspace import BudgetExceeded, new_id, now_iso


class TrainGeneratorArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(json_schema_extra={"role": "source"}, description="Registered data source to learn from, e.g. 'nhanes-2017-2018'.")
    epsilon: float = Field(json_schema_extra={"role": "epsilon"}, gt=0, description="Privacy budget epsilon to spend (smaller = more private, less accurate); 1 is a common choice.")
    delta: float | None = Field(json_schema_extra={"role": "delta"}, default=None, gt=0, lt=1, description="Privacy delta; leave empty for min(config, 1/n^1.1).")
    conditions: list[str] | None = Field(default=None, description="Binary/categorical columns the generator is conditioned on; default the source's cohort column and sex.")
    epochs: int | None = Field(default=None, gt=0, le=1000, description="Training epochs; leave empty for the configured default.")
    accountant: str | None = Field(default=None, description="Privacy accountant: 'prv' (default) or 'rdp'.")
    seed: int | None = Field(json_schema_extra={"role": "seed"}, default=None, description="Random seed for weight initialisation and latent noise; privacy noise is secure, so retraining gives a different model.")


def default_conditions(schema: SourceSchema, cohort_column: str | None = None) -> list[str]:
    out: list[str] = []
    if cohort_column:
        out.append(cohort_column)
    elif schema.condition_columns:
        out.append(schema.condition_columns[0])
    if "sex" in schema.column_map() and "sex" not in out and schema.column("sex").type in (ColumnType.binary, ColumnType.categorical):
        out.append("sex")
    return out


def validate_conditions(schema: SourceSchema, conditions: list[str]) -> list[str]:
    valid = [c.name for c in schema.columns if c.type in (ColumnType.binary, ColumnType.categorical)]
    seen: list[str] = []
    for c in conditions:
        if c not in valid:
            raise ToolInputError(f"cannot condition on '{c}'; conditions must be binary or categorical columns of "
                                 f"{schema.name}: {', '.join(valid)}")
        if c not in seen:
            seen.append(c)
    return seen


# delta for a source that publishes no row count (below 1/n up to a million records), and the largest a user
# may ask for there (it cannot be checked against 1/n without reading n).
UNKNOWN_N_DELTA = 1e-6
MAX_DELTA_UNKNOWN_N = 1e-4


def public_row_count(deps: Deps, source: str) -> int | None:
    """The row count the source's owner published (`n_public` in its metadata), or None. Only this count
    may size delta and batches or appear in results; the true count is never published (issue: a record's
    presence must not show in an exact count)."""
    n = deps.catalog.get(source).meta.n_public
    return int(n) if n else None


def _private_row_count(deps: Deps, source: str) -> int:
    """The true row count, for refusing an unusable request only (never shown: messages do not quote it)."""
    row = deps.workspace.get("sources", "name", source)
    if row is not None and row.get("n_rows"):
        return int(row["n_rows"])
    return int(deps.catalog.n_rows(source))


def train_model(deps: Deps, source: str, epsilon: float, *, delta: float | None = None,
                conditions: list[str] | None = None, epochs: int | None = None, accountant: str | None = None,
                seed: int | None = None, cohort_column: str | None = None, what: str = "") -> dict[str, Any]:
    """Charge, train, save and record a generator. Returns the models-table record plus a summary."""
    from synthehr.tools.engines.dpgan import train_dpgan

    settings = deps.settings
    schema = deps.catalog.get(source)  # ToolInputError listing the sources
    pv = settings.privacy
    if not epsilon > 0:
        raise ToolInputError("epsilon must be greater than 0")
    if epsilon > pv.max_epsilon_per_request:
        raise ToolInputError(f"epsilon {epsilon:g} is above the limit of {pv.max_epsilon_per_request:g} per request "
                             f"(privacy.max_epsilon_per_request); ask for a smaller epsilon")
    accountant = accountant or pv.accountant
    if accountant not in ("prv", "rdp"):
        raise ToolInputError(f"unknown accountant '{accountant}'; valid: prv, rdp")
    conds = validate_conditions(schema, conditions if conditions else default_conditions(schema, cohort_column))
    seed = settings.generation.seed if seed is None else int(seed)
    epochs = epochs or settings.training.epochs
    ws = deps.workspace
    # 1) Budget check on epsilon before anything touches the data.
    try:
        ws.check_budget(source, epsilon, 0.0, pv.source_budget_epsilon, pv.source_budget_delta)
    except BudgetExceeded as exc:
        raise ToolInputError(str(exc)) from None
    n_public = public_row_count(deps, source)
    holdout_fraction = settings.training.holdout_fraction
    n_true = _private_row_count(deps, source)
    if n_true - int(round(n_true * holdout_fraction)) < 50:
        raise ToolInputError(f"{source} has too few records to train on (at least 50 training records are needed)")
    n_public_train = int(round(n_public * (1 - holdout_fraction))) if n_public else None
    if delta is None:
        # min(config, 1/n^1.1) with the published n, and at most a tenth of the source's delta budget so that
        # it allows several trainings (the budget's delta is spent by basic composition too). Without a
        # published n: the configured delta or 1e-6, which is below 1/n for any source of up to a million records.
        delta = min(default_delta(n_public, pv.target_delta) if n_public else (pv.target_delta or UNKNOWN_N_DELTA),
                    pv.source_budget_delta / 10)
    elif n_public_train and delta >= 1.0 / n_public_train:
        raise ToolInputError(f"delta {delta:g} is too large for the {n_public_train} training records the source "
                             f"publishes; use less than 1/n = {1.0 / n_public_train:.3g}")
    elif not n_public_train and delta > MAX_DELTA_UNKNOWN_N:
        raise ToolInputError(f"delta {delta:g} is too large: this source does not publish its row count, so delta "
                             f"must be at most {MAX_DELTA_UNKNOWN_N:g} (or leave it empty for the default)")
    eps_pre, eps_sgd = split_budget(epsilon, pv.preprocessing_share)
    model_id = new_id("model")
    run_id = new_id("run")
    # 2) Charge the full target, as two ledger lines, before loading any record. Both lines and the
    #    run record go in ONE transaction: all or nothing, so a concurrent charge cannot orphan half.
    params = {"source": source, "epsilon": epsilon, "delta": delta, "conditions": conds, "epochs": epochs,
              "accountant": accountant, "seed": seed, "model_id": model_id}
    # The same split the engine uses: with Gaussian per-column tables, half of delta goes to them
    # (charged even if the engine ends up releasing no table: overcharging is safe, undercharging is not).
    # Engine v2: the tables before training are one OpenDP zCDP release at (eps_pre, delta / 2).
    delta_pre = delta * 0.5 if eps_pre > 0 else 0.0
    mech_pre = "opendp-zcdp-marginals"
    lines = [
        {"epsilon": eps_pre, "delta": delta_pre, "mechanism": mech_pre,
         "what": f"{what or 'train'} {model_id}: DP frequencies of the conditioning columns and per-column tables"},
        {"epsilon": eps_sgd, "delta": delta - delta_pre, "mechanism": f"dp-sgd-opacus-{accountant}",
         "what": f"{what or 'train'} {model_id}: discriminator DP-SGD (target)"},
    ]
    try:
        ws.charge_many(source, lines, pv.source_budget_epsilon, pv.source_budget_delta, ref=model_id,
                       run={"id": run_id, "kind": "train", "started_at": now_iso(), "status": "running",
                            "session": deps.session.name, "params_json": params})
    except BudgetExceeded as exc:
        raise ToolInputError(str(exc)) from None
    model_dir = ws.models_dir / model_id
    t0 = time.perf_counter()
    try:
        # 3) Only now load the real records; split the holdout off by seed.
        from synthehr.tools.engines.quality import split_holdout  # the report rebuilds the same split from the manifest

        train, holdout = split_holdout(deps.catalog.load(source), holdout_fraction, seed)
        model = train_dpgan(train, schema, target_epsilon=epsilon, target_delta=delta, conditions=conds,
                            epochs=epochs, seed=seed, accountant=accountant, settings=settings.training,
                            preprocessing_share=pv.preprocessing_share, progress=deps.progress,
                            n_public=n_public_train)
        seconds = time.perf_counter() - t0
        if n_public_train:
            rows_trained, rows_basis = n_public_train, "published count"
        else:  # the DP estimate of n from the structure's tables (already charged)
            est = float((model.hyperparameters.get("structure") or {}).get("total") or 0.0)
            rows_trained, rows_basis = int(round(est, -1)), "DP estimate"
        extra = {"model_id": model_id, "source": source, "source_content_hash": deps.catalog.content_hash(source),
                 "holdout_fraction": holdout_fraction, "holdout_seed": seed,
                 # Published or DP counts only: the true counts are never stored outside the custodian report.
                 "rows_trained": rows_trained, "rows_trained_basis": rows_basis,
                 "train_seconds": round(seconds, 2),
                 "ledger": {"epsilon": epsilon, "delta": delta, "note": "the full target was charged before training"}}
        model.save(model_dir, extra_manifest=extra)
        quality = _custodian_view(deps, source, _quality_hook(model, train, holdout, schema, conds, model_dir))
        manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
        record = {"id": model_id, "source": source, "created_at": now_iso(), "path": str(model_dir),
                  "epsilon": model.epsilon, "delta": model.delta, "accountant": accountant, "seed": seed,
                  "conditions_json": conds, "manifest_json": manifest}
        ws.insert("models", record)
    except BaseException as exc:
        shutil.rmtree(model_dir, ignore_errors=True)
        ws.update_run(run_id, "failed", {"error": type(exc).__name__})
        raise
    summary = {
        "model_id": model_id, "source": source, "epsilon": model.epsilon, "target_epsilon": epsilon, "delta": delta,
        "accountant": accountant, "conditions": conds, "epochs": epochs, "seed": seed, "rows_trained": rows_trained,
        "rows_trained_basis": rows_basis, "seconds": round(seconds, 1), "path": str(model_dir),
        "epsilon_preprocessing": model.privacy_details.get("epsilon_preprocessing"),
        "epsilon_dp_sgd": model.privacy_details.get("epsilon_dp_sgd"),
        "noise_multiplier": model.privacy_details.get("noise_multiplier"), "quality": quality,
    }
    ws.update_run(run_id, "ok", summary)
    deps.session.last_model = model_id
    return {"record": record, "summary": summary, "model": model, "run_id": run_id}


def _custodian_view(deps: Deps, source: str, quality: dict | None) -> dict | None:
    """What of the custodian report the answer may carry: where it is, always; its flags (which quote
    non-private statistics of the real records) only when the user is the source's custodian."""
    if quality is None:
        return None
    from synthehr.tools.engines.quality import CUSTODIAN_WARNING, custodian_allowed

    allowed = custodian_allowed(deps, source)
    view: dict[str, Any] = {"custodian_report": quality.get("dir"), "warning": CUSTODIAN_WARNING, "shown": allowed}
    if allowed:
        view.update({k: v for k, v in quality.items() if k != "dir"})
    else:
        view["note"] = ("withheld: privacy.custodian_reports is false for this source; the data custodian can read "
                        "it with synthehr report after setting it to true")
    return view


def _quality_hook(model: Any, train: Any, holdout: Any, schema: SourceSchema, conds: list[str], model_dir: Any) -> dict | None:
    """QUALITY HOOK: when synthehr.tools.engines.quality.build_quality_report is importable, compare a synthetic sample with the
    holdout (records training never saw) and write the report (quality.json, ...) into the model folder."""
    try:
        from synthehr.tools.engines.quality import build_quality_report
    except ImportError:
        return None
    if len(holdout) == 0:
        return None
    synthetic = model.sample(len(train), seed=model.seed)
    privacy = {"epsilon": model.epsilon, "delta": model.delta, "target_epsilon": model.target_epsilon,
               "target_delta": model.target_delta, "accountant": model.accountant, "charges": model.charges}
    report = build_quality_report(real_train=train, real_holdout=holdout, synthetic=synthetic, schema=schema,
                                  label=conds[0] if conds else None, privacy=privacy, out_dir=model_dir,
                                  seed=model.seed)
    return {"dir": str(model_dir), "flags": report.get("flags") if isinstance(report, dict) else None,
            "files": report.get("files") if isinstance(report, dict) else None}


def train_generator(deps: Deps, args: TrainGeneratorArgs) -> ToolResult:
    with deps.workspace.lock():  # one training at a time per workspace (see generate_cohort)
        out = train_model(deps, args.source, args.epsilon, delta=args.delta, conditions=args.conditions,
                          epochs=args.epochs, accountant=args.accountant, seed=args.seed)
    s = out["summary"]
    about = "" if s["rows_trained_basis"] == "published count" else "about "
    text = (f"Trained model {s['model_id']} on {about}{s['rows_trained']:,} records of {s['source']} "
            f"({s['rows_trained_basis']}) "
            f"(conditioned on {', '.join(s['conditions']) or 'nothing'}): epsilon spent {s['epsilon']:.3g} of target "
            f"{s['target_epsilon']:g}, delta {s['delta']:.2g}, accountant {s['accountant']}, {s['seconds']:.0f} s.")
    from synthehr.tools.base import Figure

    return ToolResult(
        text=text, data=s, files=[s["path"]],
        summary=f"I trained a differentially private generator ({s['model_id']}) on {about}{s['rows_trained']:,} records of {s['source']}.",
        figures=[Figure(label="epsilon spent", value=round(s["epsilon"], 3)), Figure(label="target epsilon", value=s["target_epsilon"])],
        privacy=(f"Training spent epsilon {s['epsilon']:.3g} (delta {s['delta']:.1g}) of {s['source']}'s privacy budget; "
                 "the generator never stores real records."))


SPEC = ToolSpec(
    name="train_generator",
    description=("Train a differentially private synthetic-data generator (conditional GAN with DP-SGD) on a "
                 "registered real data source. Spends privacy budget from the source's ledger. Usually not needed: "
                 "generate_cohort trains one when none fits."),
    args_model=TrainGeneratorArgs,
    func=train_generator,
    examples=("train a generator on nhanes-2017-2018 with epsilon 1",
              "train a DP model on NHANES with epsilon 3 using the rdp accountant"),
    router_examples=("train a generator on NHANES", "fit a new DP-GAN model with epsilon 2",
                     "train a differentially private model for diabetes without sampling yet"),
    describe=lambda deps, args: (f"Training a differentially private generator on {args.source} with epsilon "
                                 f"{args.epsilon:g} (about a minute; this spends privacy budget)."),
)
