"""cohort_stats: descriptive statistics and plots of a SYNTHETIC data set (never of a real source).

Reads <workspace>/datasets/<id>/data.parquet (written by generate_cohort) and its card, and
returns counts, mean/SD/median/IQR/min/max of numeric observations, proportions of categorical and
0/1 observations, shares above/below guideline thresholds (defaults from the condition profile),
summaries within one or two groups (sex, age band 18-44/45-64/65+, race/ethnicity, any category),
Pearson and Spearman correlation of two observations, missing counts, and optional PNG plots in
<dataset dir>/plots/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthehr.tools.engines import stats as se
from synthehr.tools.engines.population import representativeness
from synthehr.tools.base import Figure, Missing, ToolInputError, ToolResult, ToolSpec
from synthehr.tools.store.datasets import dataset_card, resolve_dataset
from synthehr.tools.deps import Deps

DEFAULT_COLUMNS = 10
TEXT_COLUMNS = 5
TEXT_GROUPS = 6
TEXT_THRESHOLDS = 3
GROUPED_PLOTS = 4
PLOT_KEYWORDS = ("heatmap", "grouped", "scatter")
BP_PAIR = ("sbp_mmhg", "dbp_mmhg")


def _split(v: Any) -> Any:
    """Let a small model pass "a, b" where a list is expected."""
    if isinstance(v, str):
        parts = [p.strip() for p in re.split(r"[,;]", v) if p.strip()]
        return parts or None
    return v


class CohortStatsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        "last", json_schema_extra={"role": "dataset"},
        description='Synthetic data set id (e.g. "ds-20261126-...") or "last" for the one generated most recently '
        "in this conversation. Real data sources cannot be summarised.",
    )
    columns: list[str] | None = Field(
        None, json_schema_extra={"role": "columns"}, description="Observations to summarise, e.g. [\"hba1c_pct\", \"bmi_kg_m2\"]. Default: the condition's key observations."
    )
    by: list[str] | None = Field(
        None, json_schema_extra={"role": "by"},
        description='Group the statistics by one or two columns, e.g. ["sex"] or ["sex", "age_band"] '
        "(age_band is 18-44 / 45-64 / 65+; also race_ethnicity or any categorical column).",
    )
    thresholds: list[str] | None = Field(
        None, json_schema_extra={"role": "thresholds"},
        description='Cut points to report the share of patients meeting, e.g. ["hba1c_pct>=9", "bp>=130/80"]. '
        "Default: the condition profile's guideline thresholds.",
    )
    correlation: list[str] | None = Field(
        None, json_schema_extra={"role": "correlation"}, description='Two numeric observations to correlate (Pearson and Spearman), e.g. ["bmi_kg_m2", "hba1c_pct"].'
    )
    plot: list[str] | None = Field(
        None, json_schema_extra={"role": "plot"},
        description='PNG plots to draw: observation names (histogram or bar chart), "heatmap" (correlations), '
        '"grouped" (box/bar plot by the `by` groups) or "scatter" (the correlation pair).',
    )

    @field_validator("columns", "by", "thresholds", "correlation", "plot", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _split(v)


# ---- the data set ------------------------------------------------------------------------------
@dataclass
class ColumnInfo:
    name: str
    kind: str  # continuous | integer | binary | categorical
    label: str = ""
    unit: str | None = None
    categories: list[str] | None = None
    lower: float | None = None
    upper: float | None = None

    @property
    def numeric(self) -> bool:
        return self.kind in ("continuous", "integer")

    @property
    def title(self) -> str:
        return self.label or self.name

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "unit": self.unit, "type": self.kind}


@dataclass
class LoadedDataset:
    id: str
    row: dict[str, Any]
    dir: Path
    frame: pd.DataFrame
    card: dict[str, Any]
    columns: dict[str, ColumnInfo]
    profile: Any = None  # synthehr.tools.store.profiles.ConditionProfile | None
    schema: Any = None  # synthehr.tools.store.schema.SourceSchema | None

    @property
    def plots_dir(self) -> Path:
        return self.dir / "plots"


def resolve_dataset_row(deps: Deps, ref: str | None) -> dict[str, Any]:
    """The datasets-table row that `ref` names (an id, or "last"); a real source's name is refused."""
    key = (ref or "").strip()
    if key and deps.workspace.get("datasets", "id", key) is None and key in deps.catalog.names():
        raise ToolInputError(
            f"'{key}' is a real data source: synthehr only summarises synthetic data sets, never real records. "
            "Name a synthetic data set id or 'last'."
        )
    return resolve_dataset(deps, key or "last")


def _load_profile(card: dict[str, Any], row: dict[str, Any]) -> Any:
    cond = card.get("condition") or {}
    cid = (cond.get("id") if isinstance(cond, dict) else None) or row.get("condition")
    if not cid:
        return None
    try:
        from synthehr.tools.store.profiles import load_profiles, resolve_condition

        profiles = load_profiles()
        return profiles.get(cid) or resolve_condition(str(cid), profiles)
    except Exception:  # a missing or broken profile must not stop the statistics
        return None


def column_infos(frame: pd.DataFrame, card: dict[str, Any], schema: Any = None, profile: Any = None) -> dict[str, ColumnInfo]:
    """Type, label, unit and categories of every column: card first, then source schema, profile, dtype."""
    card_cols = {c.get("name"): c for c in card.get("columns") or [] if isinstance(c, dict)}
    schema_cols = schema.column_map() if schema is not None else {}
    obs = {}
    if profile is not None:
        for o in profile.observations:
            obs.setdefault(o.source_column or o.name, o)
    out: dict[str, ColumnInfo] = {}
    for name in frame.columns:
        cc, sc, ob = card_cols.get(name) or {}, schema_cols.get(name), obs.get(name)
        kind = cc.get("type") or (sc.type.value if sc is not None else None) or (ob.value_type if ob is not None else None)
        if kind not in ("continuous", "integer", "binary", "categorical"):
            kind = se.infer_kind(frame[name])
        cats = None
        if kind == "categorical":
            cats = (sc.categories if sc is not None else None) or (ob.categories if ob is not None else None)
            if cats is None and isinstance(frame[name].dtype, pd.CategoricalDtype):
                cats = [str(c) for c in frame[name].cat.categories]
        out[name] = ColumnInfo(
            name=name,
            kind=kind,
            label=cc.get("label") or (sc.label if sc is not None else "") or (ob.label if ob is not None else ""),
            unit=cc.get("unit") or (sc.unit if sc is not None else None) or (ob.unit if ob is not None and ob.numeric and ob.value_type != "binary" else None),
            categories=list(cats) if cats else None,
            lower=sc.lower if sc is not None else (ob.lower if ob is not None else None),
            upper=sc.upper if sc is not None else (ob.upper if ob is not None else None),
        )
    return out


def load_dataset(deps: Deps, ref: str | None) -> LoadedDataset:
    """Open a synthetic data set by id or "last": its rows, card, column types and condition profile."""
    row = resolve_dataset_row(deps, ref)
    ddir = Path(row["dir"])
    parquet, csv = ddir / "data.parquet", ddir / "data.csv"
    if parquet.is_file():
        frame = pd.read_parquet(parquet)
    elif csv.is_file():
        frame = pd.read_csv(csv)
    else:
        raise ToolInputError(f"the files of data set '{row['id']}' are missing from {ddir}; generate it again")
    card = dataset_card(row)
    schema = None
    try:
        schema = deps.catalog.get(row["source"])
    except Exception:
        schema = None
    profile = _load_profile(card, row)
    infos = column_infos(frame, card, schema, profile)
    for name, info in infos.items():
        if info.kind == "categorical" and info.categories and not isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None).astype(pd.CategoricalDtype(info.categories))
    return LoadedDataset(id=row["id"], row=row, dir=ddir, frame=frame, card=card, columns=infos, profile=profile, schema=schema)


# ---- name resolution ---------------------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def resolve_column(ds: LoadedDataset, name: str, what: str = "column", allowed: list[str] | None = None) -> str:
    """Map a user's or model's column name to a data set column; ToolInputError lists the valid ones."""
    valid = allowed if allowed is not None else list(ds.columns)
    n = _norm(name)
    if n in valid:
        return n
    if ds.profile is not None:
        for o in ds.profile.observations:
            if n in (_norm(o.name), _norm(o.label)) and o.source_column in valid:
                return o.source_column
    prefixed = [c for c in valid if c.startswith(n + "_") or c.startswith(n)]
    if n and len(prefixed) == 1:
        return prefixed[0]
    raise ToolInputError(f"unknown {what} '{name}' in data set {ds.id}; valid {what}s: {', '.join(valid)}")


def default_columns(ds: LoadedDataset) -> list[str]:
    cols: list[str] = []
    if ds.profile is not None:
        for o in ds.profile.observations:
            if o.source_column in ds.columns and o.source_column not in cols:
                cols.append(o.source_column)
    if not cols:
        cols = [c for c in ds.columns if c != se.AGE_BAND]
    return cols[:DEFAULT_COLUMNS]


def group_columns(ds: LoadedDataset) -> list[str]:
    cols = [c for c, i in ds.columns.items() if i.kind in ("categorical", "binary") and c != se.AGE_BAND]
    if se.AGE_COLUMN in ds.columns:
        cols.insert(0, se.AGE_BAND)
    return cols


def resolve_group(ds: LoadedDataset, name: str) -> str:
    n = _norm(name)
    if n in ("age", "age_band", "ageband", "age_group", "age_groups", "age_bands", "age_years") and se.AGE_COLUMN in ds.columns:
        return se.AGE_BAND
    return resolve_column(ds, name, "grouping column", group_columns(ds))


def _profile_thresholds(ds: LoadedDataset, column: str) -> list[se.ThresholdSpec]:
    if ds.profile is None:
        return []
    out = []
    for o in ds.profile.observations:
        if o.source_column == column:
            for t in o.thresholds:
                out.append(se.ThresholdSpec(column, t.op, float(t.value), label=t.label, guideline=t.guideline))
    return out


def default_thresholds(ds: LoadedDataset, columns: list[str]) -> list[se.ThresholdSpec]:
    specs: list[se.ThresholdSpec] = []
    for c in columns:
        specs += _profile_thresholds(ds, c)
    sbp, dbp = BP_PAIR
    if sbp in columns and dbp in columns:
        hi_s = sorted((t for t in _profile_thresholds(ds, sbp) if t.op == ">="), key=lambda t: t.value)
        hi_d = sorted((t for t in _profile_thresholds(ds, dbp) if t.op == ">="), key=lambda t: t.value)
        for ts, td in zip(hi_s, hi_d):
            specs.append(se.ThresholdSpec(sbp, ">=", ts.value, dbp, td.value, label=ts.label, guideline=ts.guideline))
    return specs


def parse_user_threshold(ds: LoadedDataset, text: str) -> se.ThresholdSpec:
    try:
        name, op, value, second = se.parse_threshold(text)
    except ValueError as exc:
        raise ToolInputError(str(exc)) from None
    numeric = [c for c, i in ds.columns.items() if i.numeric or i.kind == "binary"]
    if name in ("bp", "blood_pressure") or second is not None:
        sbp, dbp = BP_PAIR
        if name not in ("bp", "blood_pressure"):
            raise ToolInputError(f"threshold {text!r}: 'a/b' values are for blood pressure only; write 'bp>=130/80'")
        if sbp not in ds.columns or dbp not in ds.columns:
            raise ToolInputError(f"data set {ds.id} has no systolic and diastolic blood pressure for {text!r}")
        if second is None:
            raise ToolInputError(f"threshold {text!r}: give systolic/diastolic, e.g. 'bp>=130/80'")
        return se.ThresholdSpec(sbp, op, value, dbp, second)
    col = resolve_column(ds, name, "numeric column", numeric)
    label = ""
    for t in _profile_thresholds(ds, col):
        if t.op == op and t.value == value:
            label = t.label
    return se.ThresholdSpec(col, op, value, label=label)


# ---- the tool ----------------------------------------------------------------------------------
def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}" if abs(v) < 10 else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _text_thresholds(shares: list[dict[str, Any]], user: bool) -> list[dict[str, Any]]:
    """The thresholds worth a mention: all the user asked for; else the profile's last (strictest) few,
    skipping the complement of one already shown (< 130 beside >= 130)."""
    if user:
        return shares
    picked: list[dict[str, Any]] = []
    complement = {">=": "<", "<": ">=", ">": "<=", "<=": ">"}
    for t in reversed(shares):
        if any(p["value"] == t["value"] and complement.get(p["op"]) == t["op"] for p in picked):
            continue
        picked.append(t)
        if len(picked) == TEXT_THRESHOLDS:
            break
    return sorted(picked, key=lambda t: shares.index(t))


def _summary_text(name: str, s: dict[str, Any], info: ColumnInfo, shares: list[dict[str, Any]]) -> str:
    if s["n"] == 0:
        return f"{name}: no values ({s['missing']} missing)"
    if s["kind"] == "numeric":
        unit = f" {info.unit}" if info.unit and info.unit not in ("%", "ratio") else ("%" if info.unit == "%" else "")
        txt = (
            f"{name} mean {_fmt(s['mean'])}{unit} (SD {_fmt(s['sd'])}), median {_fmt(s['median'])} "
            f"(IQR {_fmt(s['q1'])}-{_fmt(s['q3'])})"
        )
    elif s["kind"] == "binary":
        txt = f"{name} {_pct(s['proportion_1'])} yes"
    else:
        top = sorted(s["proportions"].items(), key=lambda kv: -(kv[1] or 0))[:4]
        txt = f"{name} " + ", ".join(f"{k} {_pct(v)}" for k, v in top)
    if s["missing"]:
        txt += f" ({s['missing']} missing)"
    if shares:
        txt += "; " + ", ".join(f"{t['short']} {_pct(t['share'])}" for t in shares)
    return txt


def cohort_stats(deps: Deps, args: CohortStatsArgs) -> ToolResult:
    """Statistics (and optional plots) of a synthetic data set."""
    ds = load_dataset(deps, args.dataset)
    frame = se.with_age_band(ds.frame)
    if se.AGE_BAND in frame.columns and se.AGE_BAND not in ds.columns:
        ds.columns[se.AGE_BAND] = ColumnInfo(se.AGE_BAND, "categorical", "Age band", "years", list(se.AGE_BAND_LABELS))

    columns = [resolve_column(ds, c) for c in args.columns] if args.columns else default_columns(ds)
    columns = list(dict.fromkeys(columns))
    by = [resolve_group(ds, b) for b in (args.by or [])]
    if len(by) > 2:
        raise ToolInputError(f"group by at most two columns (got {len(by)}: {', '.join(by)})")
    if len(set(by)) != len(by):
        raise ToolInputError("the two grouping columns must differ")
    if args.thresholds:
        thresholds = [parse_user_threshold(ds, t) for t in args.thresholds]
    else:
        thresholds = default_thresholds(ds, columns)

    corr_pair: list[str] | None = None
    if args.correlation:
        if len(args.correlation) != 2:
            raise ToolInputError(f"correlation needs exactly two observations, e.g. ['bmi_kg_m2', 'hba1c_pct'] (got {len(args.correlation)})")
        numeric = [c for c, i in ds.columns.items() if i.numeric or i.kind == "binary"]
        corr_pair = [resolve_column(ds, c, "numeric column", numeric) for c in args.correlation]

    plot_items: list[str] = []
    for p in args.plot or []:
        key = _norm(p)
        if key in ("correlation", "correlations", "corr", "heat_map"):
            key = "heatmap"
        if key in ("group", "groups", "box", "boxplot", "by_group", "comparison"):
            key = "grouped"
        if key in PLOT_KEYWORDS:
            plot_items.append(key)
        else:
            try:
                plot_items.append(resolve_column(ds, p))
            except ToolInputError:
                raise ToolInputError(
                    f"unknown plot '{p}'; plot an observation ({', '.join(ds.columns)}) or one of: {', '.join(PLOT_KEYWORDS)}"
                ) from None

    kinds = {c: ("numeric" if ds.columns[c].numeric else ds.columns[c].kind) for c in columns}
    cats = {c: ds.columns[c].categories for c in columns}
    stats = {c: {**se.summarise(frame[c], kinds[c], cats[c]), **ds.columns[c].as_dict()} for c in columns}
    shares = [{**se.threshold_share(frame, t), "short": t.short} for t in thresholds]
    missing = {c: int(frame[c].isna().sum()) for c in ds.columns if c != se.AGE_BAND}

    data: dict[str, Any] = {
        "dataset_id": ds.id,
        "n_rows": int(len(frame)),
        "source": ds.row.get("source"),
        "condition": ds.profile.id if ds.profile is not None else ds.row.get("condition"),
        "columns": stats,
        "thresholds": shares,
        "missing": missing,
        # What these numbers stand for: population targets applied or not; weighted means where weights exist.
        "representativeness": representativeness(ds.frame, ds.card, columns),
    }
    if by:
        groups = se.group_by(frame, by, kinds={c: kinds[c] for c in columns if c not in by}, categories=cats, thresholds=thresholds)
        data["groups"] = {"by": by, "groups": groups}
    if corr_pair:
        data["correlation"] = {"x": corr_pair[0], "y": corr_pair[1], **se.correlation(frame[corr_pair[0]], frame[corr_pair[1]])}

    files: list[str] = []
    if plot_items:
        from synthehr.tools.engines import plots

        grouped_cols = columns if args.columns else [c for c in columns if c not in by][:GROUPED_PLOTS]
        files = plots.dataset_plots(
            frame, ds.columns, plot_items, ds.plots_dir, dataset_id=ds.id, columns=columns, by=by, grouped_columns=grouped_cols,
            thresholds=thresholds, correlation=corr_pair,
        )
        data["plots"] = files

    # The short observation for the LLM.
    if len(frame) == 0:
        return ToolResult(text=f"Cohort {ds.id}: 0 rows; nothing to summarise.", data=data, files=files)
    parts = [f"Cohort {ds.id}: {len(frame)} rows."]
    by_col: dict[str, list[dict[str, Any]]] = {}
    for t in shares:
        by_col.setdefault(t["column"] if "second_column" not in t else "bp", []).append(t)
    n_text = TEXT_COLUMNS if not (by or corr_pair) else 3
    for c in columns[:n_text]:
        parts.append(_summary_text(c, stats[c], ds.columns[c], _text_thresholds(by_col.get(c, []), bool(args.thresholds))) + ".")
    if len(columns) > n_text:
        parts.append(f"(+{len(columns) - n_text} more columns in data)")
    for t in _text_thresholds(by_col.get("bp", []), bool(args.thresholds)):
        parts.append(f"{t['threshold']}: {_pct(t['share'])}.")
    asked_elsewhere = [t for t in shares if args.thresholds and t["column"] not in columns[:n_text] and "second_column" not in t]
    for t in asked_elsewhere[:3]:
        parts.append(f"{t['threshold']}: {_pct(t['share'])}.")
    if by:
        gparts = []
        lead = next((c for c in columns if kinds[c] == "numeric" and c not in by), None)
        for g in data["groups"]["groups"][:TEXT_GROUPS]:
            label = "/".join(str(v) for v in g["group"].values())
            if lead:
                gparts.append(f"{label} n={g['n']} {lead} mean {_fmt(g['stats'][lead]['mean'])}")
            else:
                gparts.append(f"{label} n={g['n']}")
        more = len(data["groups"]["groups"]) - TEXT_GROUPS
        parts.append(f"By {' x '.join(by)}: " + "; ".join(gparts) + (f"; +{more} groups in data" if more > 0 else "") + ".")
    if corr_pair:
        cr = data["correlation"]
        parts.append(
            f"Correlation {corr_pair[0]}~{corr_pair[1]}: Pearson r {_fmt(cr['pearson'], 2)}, Spearman rho {_fmt(cr['spearman'], 2)} (n={cr['n']})."
        )
    if files:
        names = ", ".join(Path(f).name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        parts.append(f"{len(files)} plot(s) in {ds.plots_dir}: {names}.")
    return ToolResult(text=" ".join(parts), data=data, files=files, **_typed(ds, columns, stats, shares, data, files,
                                                                         bool(args.thresholds)))


def _label(ds: LoadedDataset, column: str) -> str:
    info = ds.columns.get(column)
    label = info.label if info is not None and getattr(info, "label", None) else column.replace("_", " ")
    # "Body mass index" -> "body mass index"; acronyms and "HbA1c" keep their capitals.
    short = re.search(r"\(([A-Za-z0-9]{2,10})\)$", label)  # "Glycohemoglobin (HbA1c)" -> "HbA1c"
    if short:
        return short.group(1)
    first = label.split(" ")[0]
    return label[:1].lower() + label[1:] if first[1:].isalpha() and first[1:].islower() else label


_OP_TEXT = {">=": "≥", "<=": "≤", ">": ">", "<": "<", "==": "=", "!=": "≠"}


def _threshold_text(ds: LoadedDataset, t: dict[str, Any]) -> str:
    """'HbA1c > 9%' / 'systolic blood pressure ≥ 130 mmHg and diastolic blood pressure ≥ 80 mmHg' (the
    guideline's label added in parentheses where the profile gives one)."""
    def one(col: str, value: Any) -> str:
        info = ds.columns.get(col)
        unit = (info.unit if info is not None and info.unit and info.unit != "ratio" else "") or ""
        v = f"{value:g}" if isinstance(value, (int, float)) else str(value)
        return f"{_label(ds, col)} {_OP_TEXT.get(t['op'], t['op'])} {v}" + ("%" if unit == "%" else f" {unit}" if unit else "")
    text = one(t["column"], t["value"])
    if t.get("second_column"):
        text += " and " + one(t["second_column"], t["second_value"])
    label = re.sub(r"\s*\([^)]*\)", "", str(t.get("label") or "")).strip()
    if label and not re.match(r"(?:above|below|over|under)\b", label):
        text += f" ({label})"
    return text


def _typed(ds: LoadedDataset, columns: list[str], stats: dict[str, Any], shares: list[dict[str, Any]],
           data: dict[str, Any], files: list[str], user_thresholds: bool) -> dict[str, Any]:
    """The typed result fields the answer writer reads: each figure once, labelled in clinical words."""
    n = int(data["n_rows"])
    figures: list[Figure] = []
    missing: list[Missing] = []
    for c in columns[:TEXT_COLUMNS]:
        s, info = stats[c], ds.columns[c]
        label = _label(ds, c)
        unit = info.unit if info.unit and info.unit != "ratio" else ""
        if s["n"] == 0:
            missing.append(Missing(item=label, reason="no patient in this data set has a value"))
            continue
        if s["kind"] == "numeric":
            figures.append(Figure(label=f"mean {label}", value=_round(s["mean"]), unit=unit))
            figures.append(Figure(label=f"SD of {label}", value=_round(s["sd"]), unit=unit))
            figures.append(Figure(label=f"median {label}", value=_round(s["median"]), unit=unit))
        elif s["kind"] == "binary" and s.get("proportion_1") is not None:
            figures.append(Figure(label=f"{label}: yes", value=round(100 * s["proportion_1"], 1), unit="%"))
        else:
            top = sorted((s.get("proportions") or {}).items(), key=lambda kv: -(kv[1] or 0))[:4]
            figures += [Figure(label=f"{label}: {k}", value=round(100 * (v or 0), 1), unit="%") for k, v in top]
        if s.get("missing"):
            figures.append(Figure(label=f"patients with no {label} value", value=int(s["missing"])))
    for t in (shares if user_thresholds else shares[-TEXT_THRESHOLDS:]):
        if t.get("share") is not None:
            figures.append(Figure(label=f"patients with {_threshold_text(ds, t)}", value=round(100 * t["share"], 1),
                                  unit="%"))
    if data.get("correlation"):
        cr = data["correlation"]
        if cr.get("pearson") is not None:
            figures.append(Figure(label=f"Pearson correlation of {_label(ds, cr['x'])} and {_label(ds, cr['y'])}",
                                  value=round(cr["pearson"], 2)))
    what = ", ".join(_label(ds, c) for c in columns[:TEXT_COLUMNS])
    summary = f"Statistics of the {n:,} synthetic patients in {ds.id}" + (f" ({what})." if what else ".")
    plots = [f for f in files if str(f).lower().endswith((".png", ".svg", ".jpg"))]
    return {"summary": summary, "figures": figures, "missing": missing, "plots": plots}


def _round(v: float | None) -> float:
    if v is None:
        return float("nan")
    return round(float(v), 2 if abs(v) < 10 else 1)


SPEC = ToolSpec(
    name="cohort_stats",
    description=(
        "Statistics of a synthetic data set already generated: mean, SD, median, IQR, range and missing counts of "
        "observations, proportions of categories, shares above guideline thresholds (e.g. HbA1c >= 9 %, BP >= 130/80), "
        "grouped by sex / age band / race, correlation of two observations, and optional PNG plots. "
        "Only for synthetic data sets, never real sources."
    ),
    args_model=CohortStatsArgs,
    func=cohort_stats,
    examples=(
        "what is the mean HbA1c in the cohort?",
        "show the statistics of the last data set by sex and age band",
        "how many patients have HbA1c above 9%?",
        "plot the BMI distribution",
        "is BMI correlated with HbA1c in the synthetic patients?",
    ),
    router_examples=(
        "what is their mean HbA1c?", "summarise the generated data", "how many of them have high blood pressure?",
        "average age of the synthetic patients", "give me descriptive statistics of the last data set",
        "compare BMI between men and women in the cohort", "what share of patients has HbA1c above 8%?",
        "show the distribution of systolic blood pressure", "what fraction of the cohort takes insulin?",
        "percentage of current smokers in the data", "how old are the patients on average?", "show me their mean values",
        "their median systolic blood pressure", "mean age and BMI of the cohort",
    ),
    few_shot={
        "request": "what is the average BMI of those patients?",
        "context": "Last data set: ds-example-1 (condition=Hypertension, n=300). Refer to it as \"last\".",
        "thought": "They ask a statistic of the last data set.",
        "args": {"dataset": "last", "columns": ["bmi_kg_m2"]},
        "observation": "Cohort ds-example-1: 300 rows. bmi_kg_m2 mean 31.2 kg/m2 (SD 6.8).",
        "final": "The mean BMI of the 300 synthetic patients in ds-example-1 is 31.2 kg/m2 (SD 6.8).",
    },
    describe=lambda deps, args: (
        f"Computing statistics of {'the last data set' if args.dataset == 'last' else args.dataset}"
        + (f" ({', '.join(args.columns)})" if args.columns else "") + (" with plots" if args.plot else "") + "."),
    router_cues=(
        r'\b(?:mean|average|median|sd|standard deviation|distribution|share|proportion|percentage|how many|cor'
        r'relat\w*|summar\w*|statistics?|describe|prevalence|fraction|histogram|plot)\b'
    ),
)
