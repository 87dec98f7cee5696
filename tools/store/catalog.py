"""The data-source catalog: built-in sources (NHANES 2017-2018) plus sources users register.

A user source is a CSV or Parquet file with a META.yaml (provenance + column schema). Registering
validates everything first, copies the data into the workspace as Parquet, then records it in one
transaction, so nothing is half-registered on failure. Real rows are never printed or logged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from synthehr.errors import ToolInputError
from synthehr.tools.store.schema import Column, ColumnType, SourceSchema
from synthehr.tools.store.workspace import Workspace, atomic_path, now_iso


class SourceError(ToolInputError):
    """A user source or its metadata is invalid; the message names the column and the problem."""


def _builtin() -> dict[str, tuple[SourceSchema, Callable[[], pd.DataFrame], Callable[[], str]]]:
    from synthehr.tools.store.sources import nhanes

    return {nhanes.NAME: (nhanes.SCHEMA, nhanes.load, nhanes.content_hash)}


class Catalog:
    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self._frames: dict[str, pd.DataFrame] = {}

    # ---- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        users = [r["name"] for r in self.workspace.query("SELECT name FROM sources WHERE kind = 'user' ORDER BY name")]
        return list(_builtin()) + users

    def list(self) -> list[SourceSchema]:
        return [self.get(n) for n in self.names()]

    def get(self, name: str) -> SourceSchema:
        builtin = _builtin()
        if name in builtin:
            return builtin[name][0]
        row = self.workspace.get("sources", "name", name)
        if row is None:
            raise ToolInputError(f"unknown data source '{name}'; registered sources: {', '.join(self.names())}")
        try:
            return SourceSchema.model_validate_json(row["schema_json"])
        except ValidationError as exc:  # stored by an older, laxer synthehr (e.g. infinite bounds saved as null)
            from synthehr.errors import WorkspaceError

            err = exc.errors()[0]
            raise WorkspaceError(
                f"the stored metadata of source '{name}' is invalid ({'.'.join(map(str, err['loc']))}: {err['msg']}); "
                f"remove it with `synthehr doctor --remove {name}` and register it again") from None

    def is_builtin(self, name: str) -> bool:
        return name in _builtin()

    def content_hash(self, name: str) -> str:
        builtin = _builtin()
        if name in builtin:
            return builtin[name][2]()
        row = self.workspace.get("sources", "name", name)
        if row is None:
            self.get(name)  # raises with the valid names
        return str(row["content_hash"])  # type: ignore[index]

    def n_rows(self, name: str) -> int:
        """Number of records of a source (public metadata for delta = 1/n^1.1; real row count is not sensitive)."""
        return len(self.load(name))

    def load(self, name: str) -> pd.DataFrame:
        """The real records of a source, typed by its schema. For training only: never print rows."""
        if name not in self._frames:
            builtin = _builtin()
            if name in builtin:
                frame = builtin[name][1]()
            else:
                row = self.workspace.get("sources", "name", name)
                if row is None:
                    self.get(name)
                frame = coerce_frame(pd.read_parquet(row["data_path"]), self.get(name))  # type: ignore[index]
            self._frames[name] = frame
        return self._frames[name].copy()

    # ---- registration -------------------------------------------------------------------------
    def register(self, data_path: Path | str, meta_path: Path | str) -> SourceSchema:
        """Validate and register a user source. Raises SourceError naming the column and problem."""
        data_path, meta_path = Path(data_path), Path(meta_path)
        schema = read_meta(meta_path)
        name = schema.meta.name
        if name in _builtin() or self.workspace.get("sources", "name", name) is not None:
            raise SourceError(f"a data source named '{name}' is already registered; choose another name in {meta_path}")
        frame = read_table(data_path)
        frame = validate_frame(frame, schema)
        digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()
        target_dir = self.workspace.sources_dir / name
        target = target_dir / "data.parquet"
        try:
            with atomic_path(target) as tmp:
                frame.to_parquet(tmp, index=False)
            self.workspace.insert(
                "sources",
                {
                    "name": name,
                    "kind": "user",
                    "schema_json": schema.model_dump_json(),
                    "data_path": str(target),
                    "content_hash": digest,
                    "n_rows": len(frame),
                    "registered_at": now_iso(),
                },
            )
        except BaseException:
            shutil.rmtree(target_dir, ignore_errors=True)
            raise
        return schema

    def describe(self, name: str) -> dict[str, Any]:
        """Provenance and schema (no rows) as plain data for --json and the agent."""
        schema = self.get(name)
        return {
            "name": name,
            "kind": "builtin" if self.is_builtin(name) else "user",
            **schema.meta.model_dump(exclude={"name"}),
            "condition_columns": schema.condition_columns,
            "columns": [c.model_dump(exclude_none=True) for c in schema.columns],
        }


_TOP_KEYS = ("meta", "columns", "condition_columns", "label_leakage")


def read_meta(path: Path) -> SourceSchema:
    """Read and strictly validate META.yaml: unknown keys are refused by name, bounds must be finite
    with lower < upper, types and categories are checked. Raises SourceError naming the key or column."""
    from synthehr.tools.store.schema import SourceMeta

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: metadata file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (byte at position {exc.start}); save it as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SourceError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict) or "columns" not in raw:
        raise SourceError(f"{path}: expected a mapping with 'meta' (or provenance keys) and 'columns'")
    bad = [str(k) for k in raw if not isinstance(k, str)]
    if bad:
        raise SourceError(f"{path}: keys must be text, got {', '.join(bad)}")
    meta_keys = list(SourceMeta.model_fields)
    if "meta" in raw:
        unknown = [k for k in raw if k not in _TOP_KEYS]
        if unknown:
            raise SourceError(f"{path}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                              f"valid top-level keys: {', '.join(_TOP_KEYS)}")
        meta = raw.get("meta")
        if not isinstance(meta, dict):
            raise SourceError(f"{path}: 'meta' must be a mapping of provenance keys ({', '.join(meta_keys)})")
    else:
        meta = {k: v for k, v in raw.items() if k not in _TOP_KEYS}
    unknown = [str(k) for k in meta if k not in meta_keys]
    if unknown:
        raise SourceError(f"{path}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                          f"valid provenance keys: {', '.join(meta_keys)}")
    if not isinstance(raw["columns"], list) or not raw["columns"]:
        raise SourceError(f"{path}: 'columns' must be a non-empty list of column mappings")
    col_keys = list(Column.model_fields)
    for i, col in enumerate(raw["columns"]):
        if not isinstance(col, dict):
            raise SourceError(f"{path}: column #{i + 1} must be a mapping with keys such as name, type, lower, upper")
        unknown = [str(k) for k in col if k not in col_keys]
        if unknown:
            raise SourceError(f"{path}: column '{col.get('name', f'#{i + 1}')}': unknown key(s) "
                              f"{', '.join(repr(k) for k in unknown)}; valid keys: {', '.join(col_keys)}")
    body = {"meta": meta, "columns": raw["columns"], "condition_columns": raw.get("condition_columns") or [],
            "label_leakage": raw.get("label_leakage") or {}}
    try:
        schema = SourceSchema.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc)
        if loc and loc[0] == "columns" and len(loc) > 1 and isinstance(loc[1], int):
            cols = raw["columns"]
            cname = cols[loc[1]].get("name", f"#{loc[1] + 1}") if isinstance(cols[loc[1]], dict) else f"#{loc[1] + 1}"
            where = f"column '{cname}'" + (f" field '{loc[2]}'" if len(loc) > 2 else "")
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise SourceError(f"{path}: {where + ': ' if where else ''}{msg}") from None
    try:  # what is stored must read back (e.g. no bound that JSON cannot hold)
        SourceSchema.model_validate_json(schema.model_dump_json())
    except ValidationError as exc:
        raise SourceError(f"{path}: the metadata does not survive storage ({exc.errors()[0]['msg']})") from None
    return schema


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SourceError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except Exception as exc:  # a user file that does not parse is a user error
        raise SourceError(f"{path}: could not be read as {suffix[1:]} ({type(exc).__name__})") from None
    raise SourceError(f"{path}: unsupported file type '{suffix}'; use .csv or .parquet")


def validate_frame(frame: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Check a user table against its schema; return it typed. Messages never quote data values."""
    missing = [c.name for c in schema.columns if c.name not in frame.columns]
    if missing:
        raise SourceError(f"column '{missing[0]}' is declared in the metadata but not in the data file")
    extra = [c for c in frame.columns if c not in schema.column_map()]
    if extra:
        raise SourceError(f"column '{extra[0]}' is in the data file but not declared in the metadata")
    if len(frame) < 50:
        raise SourceError(f"the data file has {len(frame)} records; at least 50 are needed to train a generator")
    for col in schema.columns:
        s = frame[col.name]
        n_missing = int(s.isna().sum())
        if n_missing and not col.missing_allowed:
            raise SourceError(f"column '{col.name}': {n_missing} missing values but missing_allowed is false")
        present = s.dropna()
        if col.is_numeric:
            nums = pd.to_numeric(present, errors="coerce")
            bad = int(nums.isna().sum())
            if bad:
                raise SourceError(f"column '{col.name}': {bad} values are not numbers")
            out = int(((nums < col.lower) | (nums > col.upper)).sum())
            if out:
                raise SourceError(
                    f"column '{col.name}': {out} values fall outside the declared bounds [{col.lower:g}, {col.upper:g}]"
                )
            if col.type is ColumnType.integer and int((nums != nums.round()).sum()):
                raise SourceError(f"column '{col.name}': declared integer but has fractional values")
        elif col.type is ColumnType.binary:
            nums = pd.to_numeric(present, errors="coerce")
            if int((~nums.isin([0, 1])).sum()):
                raise SourceError(f"column '{col.name}': declared binary but has values other than 0 and 1")
        else:
            unknown = sorted(set(present.astype(str)) - set(col.categories or []))
            if unknown:
                raise SourceError(
                    f"column '{col.name}': {len(unknown)} value(s) not among the declared categories "
                    f"{col.categories}"
                )
    return coerce_frame(frame[[c.name for c in schema.columns]], schema)


def coerce_frame(frame: pd.DataFrame, schema: SourceSchema) -> pd.DataFrame:
    """Give every column its schema dtype (floats, nullable ints, categoricals)."""
    out = pd.DataFrame(index=frame.index)
    for col in schema.columns:
        s = frame[col.name]
        if col.type is ColumnType.continuous:
            out[col.name] = pd.to_numeric(s, errors="coerce").astype(float)
        elif col.type is ColumnType.integer:
            out[col.name] = pd.to_numeric(s, errors="coerce").round().astype("Int64")
        elif col.type is ColumnType.binary:
            out[col.name] = pd.to_numeric(s, errors="coerce").astype("Int8")
        else:
            out[col.name] = s.astype(object).where(s.notna(), None).map(lambda v: None if v is None else str(v)).astype(
                pd.CategoricalDtype(col.categories)
            )
    return out


def column_summary(col: Column) -> str:
    """One line per column for listings: name, type, unit, bounds or categories, LOINC."""
    bits = [col.name, col.type.value]
    if col.unit:
        bits.append(col.unit)
    if col.is_numeric:
        bits.append(f"[{col.lower:g}, {col.upper:g}]")
    if col.categories:
        bits.append("{" + ", ".join(col.categories) + "}")
    if col.loinc:
        bits.append(f"LOINC {col.loinc}")
    return "  ".join(bits)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
