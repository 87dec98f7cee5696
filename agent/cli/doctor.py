"""`synthehr doctor`: check a workspace and repair what is safe to repair, then say what it did.

Checks the database (PRAGMA integrity_check), every recorded model (manifest and weights hashes),
data set (files present, CSV hash against its card) and user source (file present, content hash);
marks runs whose process died `failed` (their privacy charges stay spent); removes orphaned
temporary folders and files. Damaged models and data sets are reported with how to remove them
(`synthehr doctor --remove ID`); nothing recorded is deleted unless asked. Never prints a data row.

Exit status: 0 when the workspace is healthy (after the safe repairs), 2 when a problem needs you.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Optional

import typer

# A temporary file this old is no longer being written by anyone (writers rename within seconds).
STALE_TMP_SECONDS = 600


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_database(db_path: Path) -> dict[str, Any]:
    """PRAGMA integrity_check on the database file, opened read-only."""
    if not db_path.exists():
        return {"ok": True, "detail": "no database yet (an empty workspace)"}
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return {"ok": False, "detail": f"{db_path} cannot be read as an SQLite database ({exc})"}
    if rows == ["ok"]:
        return {"ok": True, "detail": "integrity_check ok"}
    return {"ok": False, "detail": "integrity_check: " + "; ".join(rows[:5])}


def check_model(row: dict[str, Any]) -> str | None:
    """What is wrong with a recorded model's files, or None."""
    from synthehr.tools.engines.dpgan.model import ModelLoadError, TrainedGenerator

    mdir = Path(row["path"])
    if not mdir.is_dir():
        return f"its folder {mdir} is missing"
    try:
        manifest = TrainedGenerator.read_manifest(mdir)
    except ModelLoadError as exc:
        return str(exc)
    weights = manifest.get("weights") or {}
    wpath = mdir / str(weights.get("file", ""))
    if not wpath.is_file():
        return f"the weights file {wpath.name} is missing"
    if _sha256_file(wpath) != weights.get("sha256"):
        return f"{wpath.name} does not match the manifest's sha256 (truncated, modified or damaged)"
    return None


def check_dataset(row: dict[str, Any]) -> str | None:
    ddir = Path(row["dir"])
    if not ddir.is_dir():
        return f"its folder {ddir} is missing"
    for name in ("data.csv", "data.parquet", "card.json"):
        if not (ddir / name).is_file():
            return f"{name} is missing"
    try:
        card = json.loads((ddir / "card.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "card.json is not valid JSON"
    want = (card.get("hashes") or {}).get("csv_sha256") if isinstance(card, dict) else None
    if want and _sha256_file(ddir / "data.csv") != want:
        return "data.csv does not match the sha256 in its data card (modified or damaged)"
    return None


def check_source_schema(row: dict[str, Any]) -> str | None:
    from pydantic import ValidationError

    from synthehr.tools.store.schema import SourceSchema

    try:
        SourceSchema.model_validate_json(row["schema_json"])
    except ValidationError as exc:
        err = exc.errors()[0]
        return f"its stored metadata is invalid ({'.'.join(map(str, err['loc']))}: {err['msg']})"
    return None


def check_source(catalog: Any, row: dict[str, Any]) -> str | None:
    import pandas as pd

    path = Path(row["data_path"] or "")
    if not path.is_file():
        return f"its data file {path} is missing"
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - a damaged file is the finding
        return f"its data file cannot be read ({type(exc).__name__})"
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()
    if row.get("content_hash") and digest != row["content_hash"]:
        return "its data file does not match the content hash recorded at registration (modified)"
    return None


def remove_stale_tmp(ws: Any, now: float | None = None) -> list[str]:
    """Temporary files (.name.xxxx.tmp) left by an interrupted atomic write, untouched for STALE_TMP_SECONDS."""
    now = time.time() if now is None else now
    removed = []
    for top in (ws.models_dir, ws.datasets_dir, ws.sources_dir):
        if not top.is_dir():
            continue
        for p in top.rglob(".*.tmp"):
            try:
                if p.is_file() and now - p.stat().st_mtime > STALE_TMP_SECONDS:
                    p.unlink()
                    removed.append(ws.rel(p) or str(p))
            except OSError:
                continue
    return removed


def remove_artifact(ws: Any, ident: str) -> str:
    """Delete a model or data set (folder and record). Its ledger charges stay: the privacy was spent."""
    from synthehr.errors import UserError

    for table, col in (("models", "path"), ("datasets", "dir")):
        row = ws.get(table, "id", ident)
        if row is None:
            continue
        folder = Path(row[col])
        if ws.contains(folder) and folder != ws.root:
            shutil.rmtree(folder, ignore_errors=True)
        with ws.transaction() as conn:
            conn.execute(f"DELETE FROM {table} WHERE id = ?", (ident,))
        kind = "model" if table == "models" else "data set"
        return f"removed {kind} {ident} (folder and record; its privacy charges stay in the ledger)"
    row = ws.get("sources", "name", ident)
    if row is not None and row["kind"] == "user":
        folder = ws.sources_dir / ident
        if ws.contains(folder) and folder != ws.sources_dir:
            shutil.rmtree(folder, ignore_errors=True)
        with ws.transaction() as conn:
            conn.execute("DELETE FROM sources WHERE name = ?", (ident,))
        return f"removed source {ident} (file and record; its privacy charges stay in the ledger)"
    known = [r["id"] for r in ws.query("SELECT id FROM models UNION ALL SELECT id FROM datasets "
                                       "UNION ALL SELECT name FROM sources WHERE kind = 'user'")]
    raise UserError(f"no model, data set or user source '{ident}' in this workspace; known: {', '.join(known[-10:]) or '(none)'}")


def run_doctor(root: Path, remove: list[str] | None = None) -> dict[str, Any]:
    """Check and repair the workspace at `root`; returns the report (what was found and what was done)."""
    from synthehr.tools.store.workspace import Workspace

    report: dict[str, Any] = {"workspace": str(root), "database": None, "actions": [], "problems": []}
    db = check_database(root / "synthehr.db")
    report["database"] = db
    if not db["ok"]:
        report["problems"].append(f"database: {db['detail']}; restore synthehr.db from a backup, or move it aside "
                                  "(its ledger is then lost: keep the file) to start an empty workspace")
        report["ok"] = False
        return report
    ws = Workspace(root, recover=False)
    for ident in remove or []:
        report["actions"].append(remove_artifact(ws, ident))
    rec = ws.recover()
    for run_id in rec["failed_runs"]:
        report["actions"].append(f"marked run {run_id} failed (its process had died; its privacy charge stays spent)")
    for path in rec["removed"]:
        report["actions"].append(f"removed orphaned temporary folder {path}")
    for path in remove_stale_tmp(ws):
        report["actions"].append(f"removed orphaned temporary file {path}")
    legacy = ws.query("SELECT id FROM runs WHERE status = 'running' AND pid IS NULL")
    for r in legacy:
        report["problems"].append(f"run {r['id']} is marked running but records no process (written by an older "
                                  "synthehr); if nothing is running, it died")
    checked = {"models": 0, "datasets": 0, "sources": 0}
    for row in ws.query("SELECT * FROM models ORDER BY created_at"):
        checked["models"] += 1
        what = check_model(row)
        if what:
            report["problems"].append(f"model {row['id']} is damaged: {what}; remove it with "
                                      f"`synthehr doctor --remove {row['id']}`")
    for row in ws.query("SELECT * FROM datasets ORDER BY created_at"):
        checked["datasets"] += 1
        what = check_dataset(row)
        if what:
            report["problems"].append(f"data set {row['id']} is damaged: {what}; remove it with "
                                      f"`synthehr doctor --remove {row['id']}`")
    for row in ws.query("SELECT * FROM sources WHERE kind = 'user' ORDER BY name"):
        checked["sources"] += 1
        what = check_source_schema(row) or check_source(None, row)
        if what:
            report["problems"].append(f"source {row['name']} is damaged: {what}; remove it with "
                                      f"`synthehr doctor --remove {row['name']}` and register it again")
    report["checked"] = checked
    report["ok"] = not report["problems"]
    return report


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        remove: Optional[list[str]] = typer.Option(None, "--remove", help="Delete a damaged model, data set or user source by id "
                                                   "(repeatable). Its ledger charges stay spent."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    ) -> None:
        """Check the workspace (database, models, data sets, sources), repair what is safe, report what it did."""
        from synthehr.agent.cli.common import CTX, print_json
        from synthehr.configs.settings import load_settings

        settings = load_settings(CTX.config)
        root = Path(settings.workspace.path).expanduser().resolve()
        report = run_doctor(root, list(remove or []))
        if as_json:
            print_json(report)
        else:
            typer.echo(f"workspace {report['workspace']}")
            typer.echo(f"database: {'ok' if report['database']['ok'] else 'DAMAGED'} ({report['database']['detail']})")
            if report.get("checked"):
                c = report["checked"]
                typer.echo(f"checked {c['models']} model(s), {c['datasets']} data set(s), {c['sources']} user source(s)")
            for a in report["actions"]:
                typer.echo(f"did: {a}")
            for p in report["problems"]:
                typer.echo(f"problem: {p}")
            typer.echo("healthy" if report["ok"] else f"{len(report['problems'])} problem(s) need you")
        if not report["ok"]:
            raise typer.Exit(2)
