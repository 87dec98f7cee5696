"""The workspace: one directory with an SQLite database and folders for models, data sets and the index.

Writes are atomic (temporary file + rename; one transaction per record). The database runs in WAL
mode with a busy timeout, so two synthehr commands can work in the same workspace at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from synthehr.errors import UserError, WorkspaceError, is_database_damage

SCHEMA_VERSION = 1

# Each entry migrates the database from version i to i + 1.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('builtin', 'user')),
        schema_json TEXT NOT NULL,
        data_path TEXT,
        content_hash TEXT,
        n_rows INTEGER,
        registered_at TEXT NOT NULL
    );
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        created_at TEXT NOT NULL,
        path TEXT NOT NULL,
        epsilon REAL NOT NULL,
        delta REAL NOT NULL,
        accountant TEXT NOT NULL,
        seed INTEGER NOT NULL,
        conditions_json TEXT NOT NULL DEFAULT '[]',
        manifest_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        session TEXT,
        params_json TEXT NOT NULL DEFAULT '{}',
        result_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        run_id TEXT,
        model_id TEXT,
        source TEXT NOT NULL,
        condition TEXT,
        n_rows INTEGER NOT NULL,
        dir TEXT NOT NULL,
        epsilon REAL,
        delta REAL,
        created_at TEXT NOT NULL,
        session TEXT,
        card_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        at TEXT NOT NULL,
        epsilon REAL NOT NULL CHECK (epsilon >= 0),
        delta REAL NOT NULL CHECK (delta >= 0),
        mechanism TEXT NOT NULL,
        what TEXT NOT NULL,
        ref TEXT
    );
    CREATE INDEX ledger_source ON ledger(source);
    CREATE TABLE sessions (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        state_json TEXT NOT NULL DEFAULT '{}',
        history_json TEXT NOT NULL DEFAULT '[]'
    );
    """,
]
assert len(_MIGRATIONS) == SCHEMA_VERSION

# Columns that hold a file or folder of the workspace: stored relative to the root, returned absolute.
_PATH_COLUMNS = {"models": "path", "datasets": "dir", "sources": "data_path"}
_PATH_KEYS = frozenset(_PATH_COLUMNS.values())
# Columns added in place (idempotently) so that a process that died mid-run can be recognised.
_RUN_OWNER_COLUMNS = (("pid", "INTEGER"), ("host", "TEXT"), ("proc_start", "TEXT"))
LOCK_FILE = "synthehr.lock"


class BudgetExceeded(UserError):
    """A charge would take a source past its privacy budget. The message says what is left."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_id(prefix: str) -> str:
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path` (for writers that need a filename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class Charge:
    source: str
    at: str
    epsilon: float
    delta: float
    mechanism: str
    what: str
    ref: str | None


class Workspace:
    """A synthehr workspace rooted at `root`. Creating one makes the folders and migrates the database."""

    def __init__(self, root: Path | str, recover: bool = True):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (self.models_dir, self.datasets_dir, self.chroma_dir, self.sources_dir):
            d.mkdir(exist_ok=True)
        self._migrate()
        if recover:
            self.recover()

    # ---- layout -------------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.root / "synthehr.db"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def chroma_dir(self) -> Path:
        return self.root / "chroma"

    @property
    def sources_dir(self) -> Path:
        return self.root / "sources"

    def contains(self, path: Path | str) -> bool:
        """True when `path` lies inside the workspace (after resolving links and '..')."""
        try:
            Path(path).expanduser().resolve().relative_to(self.root)
            return True
        except ValueError:
            return False

    # ---- database -----------------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection; an SQLite error that means a damaged file becomes a WorkspaceError naming the file."""
        try:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.DatabaseError as exc:
            if is_database_damage(exc):
                raise self._damaged(exc) from exc
            raise
        finally:
            conn.close()

    def _damaged(self, exc: BaseException) -> WorkspaceError:
        return WorkspaceError(
            f"the workspace database {self.db_path} is damaged or unreadable ({exc}); run `synthehr doctor` "
            f"to check it, then restore it from a backup or move it aside to start an empty workspace")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: concurrent writers queue instead of failing)."""
        with self.connect() as conn:
            for attempt in range(50):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:  # pragma: no cover - timing dependent
                    if "locked" not in str(exc) or attempt == 49:
                        raise
                    time.sleep(0.05 * (attempt + 1))
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.connect() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"workspace {self.root} was written by a newer synthehr (schema {version} > {SCHEMA_VERSION})"
                )
            for i in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[i].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._add_run_owner_columns(conn)
            self._relativize_paths(conn)

    # ---- paths relative to the root (a moved or copied workspace keeps working) ----------------
    def rel(self, path: Path | str | None) -> str | None:
        """`path` as stored: relative to the root when inside the workspace, else unchanged."""
        if path is None:
            return None
        p = Path(path)
        if not p.is_absolute():
            return p.as_posix()
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            try:
                return p.relative_to(self.root).as_posix()
            except ValueError:
                return str(p)

    def abs(self, stored: str | Path | None) -> Path | None:
        """A stored path as an absolute path under this workspace's root."""
        if stored is None or stored == "":
            return None
        p = Path(stored)
        return p if p.is_absolute() else self.root / p

    def _relativize_paths(self, conn: sqlite3.Connection) -> None:
        """Rewrite absolute paths (written by older versions) relative to the root. A path under another
        root - the workspace was moved or copied - is re-rooted by its tail (models/<id>, datasets/<id>,
        sources/<name>/...), so the copy uses its own files, never the original's."""
        for table, col in _PATH_COLUMNS.items():
            key = "name" if table == "sources" else "id"
            rows = conn.execute(f"SELECT {key}, {col} FROM {table} WHERE {col} LIKE '/%'").fetchall()
            for row in rows:
                old = str(row[1])
                new = self.rel(old)
                if new is None or Path(new).is_absolute():
                    parts = Path(old).parts
                    top = {"models": "models", "datasets": "datasets", "sources": "sources"}[table]
                    if top in parts:
                        i = len(parts) - 1 - parts[::-1].index(top)
                        new = Path(*parts[i:]).as_posix()
                    else:
                        continue  # outside any workspace layout: leave it (doctor reports it)
                conn.execute(f"UPDATE {table} SET {col} = ? WHERE {key} = ?", (new, row[0]))

    # ---- who runs what (dead runs are marked failed at the next start) --------------------------
    def _add_run_owner_columns(self, conn: sqlite3.Connection) -> None:
        have = {r[1] for r in conn.execute("PRAGMA table_info(runs)").fetchall()}
        for name, sql_type in _RUN_OWNER_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {sql_type}")

    def dead_runs(self) -> list[dict[str, Any]]:
        """Runs marked `running` whose process, on this host, no longer exists (or is another process now)."""
        host = _hostname()
        out = []
        for row in self.query("SELECT * FROM runs WHERE status = 'running' AND pid IS NOT NULL"):
            if row.get("host") != host:
                continue  # another machine's run (a shared folder): it cannot be checked from here
            if not _process_alive(int(row["pid"]), row.get("proc_start")):
                out.append(row)
        return out

    def recover(self) -> dict[str, list[str]]:
        """Mark dead runs failed (their ledger charges stay spent) and remove what they left half-written:
        a hidden data-set folder (.ds-*.tmp) or a model folder that was never recorded. Returns what it did."""
        failed: list[str] = []
        removed: list[str] = []
        for row in self.dead_runs():
            with self.transaction() as conn:
                cur = conn.execute(
                    "UPDATE runs SET status = 'failed', finished_at = ?, result_json = ? WHERE id = ? AND status = 'running'",
                    (now_iso(), json.dumps({"error": "ProcessDied", "message": f"process {row['pid']} on {row.get('host')} "
                                            "ended before the run finished; its privacy charge stays spent"}), row["id"]))
            if cur.rowcount:
                failed.append(str(row["id"]))
        removed += self.remove_orphans()
        return {"failed_runs": failed, "removed": removed}

    def remove_orphans(self) -> list[str]:
        """Remove hidden temporary data-set folders and unrecorded model folders no live run is writing."""
        live = self.query("SELECT params_json FROM runs WHERE status = 'running'")
        busy: set[str] = set()
        for r in live:
            try:
                params = json.loads(r["params_json"] or "{}")
            except ValueError:
                continue
            for k in ("dataset_id", "model_id"):
                if params.get(k):
                    busy.add(str(params[k]))
        removed: list[str] = []
        if self.datasets_dir.is_dir():
            for p in self.datasets_dir.glob(".*.tmp"):
                ident = p.name[1:-len(".tmp")]
                if ident not in busy and p.is_dir():
                    import shutil

                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(self.rel(p) or str(p))
        if self.models_dir.is_dir():
            recorded = {r["id"] for r in self.query("SELECT id FROM models")}
            for p in self.models_dir.iterdir():
                if p.is_dir() and p.name not in recorded and p.name not in busy and p.name.startswith("model-"):
                    import shutil

                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(self.rel(p) or str(p))
        return removed

    # ---- one writer at a time for what charges the ledger -----------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the workspace (fcntl), held while deciding whether to train and training:
        two first `generate` runs at once train one model, the second reuses it."""
        import fcntl

        fh = open(self.root / LOCK_FILE, "a+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            finally:
                fh.close()

    def schema_version(self) -> int:
        with self.connect() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    # ---- privacy ledger -----------------------------------------------------------------------
    def spent(self, source: str) -> tuple[float, float]:
        """Total (epsilon, delta) charged to `source` so far (basic sequential composition)."""
        with self.connect() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM ledger WHERE source = ?", (source,)
            ).fetchone()
        return float(row[0]), float(row[1])

    def check_budget(self, source: str, epsilon: float, delta: float, budget_epsilon: float, budget_delta: float) -> None:
        """Raise BudgetExceeded if charging (epsilon, delta) would pass the source's budget."""
        spent_eps, spent_delta = self.spent(source)
        _check(source, epsilon, delta, spent_eps, spent_delta, budget_epsilon, budget_delta)

    def charge(
        self,
        source: str,
        epsilon: float,
        delta: float,
        mechanism: str,
        what: str,
        budget_epsilon: float,
        budget_delta: float,
        ref: str | None = None,
    ) -> Charge:
        """Record a privacy charge, atomically refusing it if the source's budget would be exceeded."""
        if epsilon < 0 or delta < 0:
            raise ValueError("a privacy charge cannot be negative")
        at = now_iso()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM ledger WHERE source = ?", (source,)
            ).fetchone()
            _check(source, epsilon, delta, float(row[0]), float(row[1]), budget_epsilon, budget_delta)
            conn.execute(
                "INSERT INTO ledger (source, at, epsilon, delta, mechanism, what, ref) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (source, at, float(epsilon), float(delta), mechanism, what, ref),
            )
        return Charge(source, at, float(epsilon), float(delta), mechanism, what, ref)

    def charge_many(
        self,
        source: str,
        lines: list[dict[str, Any]],
        budget_epsilon: float,
        budget_delta: float,
        ref: str | None = None,
        run: dict[str, Any] | None = None,
    ) -> list[Charge]:
        """Record several charges of one release (e.g. the two parts of a training) in ONE transaction.

        Either every line is recorded or none: the budget check covers their sum, so a concurrent
        charge can never slip in between them and leave half a training charged. `lines` are dicts
        with epsilon, delta, mechanism and what. `run`, when given, is a runs-table record inserted
        in the same transaction (its charges are then never without a run that says what became of it).
        """
        if not lines:
            raise ValueError("charge_many needs at least one line")
        for ln in lines:
            if float(ln["epsilon"]) < 0 or float(ln["delta"]) < 0:
                raise ValueError("a privacy charge cannot be negative")
        eps = sum(float(ln["epsilon"]) for ln in lines)
        delta = sum(float(ln["delta"]) for ln in lines)
        at = now_iso()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM ledger WHERE source = ?", (source,)
            ).fetchone()
            _check(source, eps, delta, float(row[0]), float(row[1]), budget_epsilon, budget_delta)
            for ln in lines:
                conn.execute(
                    "INSERT INTO ledger (source, at, epsilon, delta, mechanism, what, ref) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (source, at, float(ln["epsilon"]), float(ln["delta"]), str(ln["mechanism"]), str(ln["what"]), ref),
                )
            if run is not None:
                self._insert_in(conn, "runs", run)
        return [Charge(source, at, float(ln["epsilon"]), float(ln["delta"]), str(ln["mechanism"]), str(ln["what"]), ref)
                for ln in lines]

    def ledger(self, source: str | None = None) -> list[dict[str, Any]]:
        """Every charge with the run that made it (run id, kind, status; None when no run is recorded).

        A charge is linked to the run whose params name the charge's ref as model_id (training runs);
        a run that failed keeps its charge: the budget was spent once the mechanism could see the data.
        """
        q = ("SELECT l.id AS id, l.source AS source, l.at AS at, l.epsilon AS epsilon, l.delta AS delta, "
             "l.mechanism AS mechanism, l.what AS what, l.ref AS ref, r.id AS run_id, r.kind AS run_kind, "
             "r.status AS status, r.started_at AS run_started_at, r.finished_at AS run_finished_at "
             "FROM ledger l LEFT JOIN runs r ON l.ref IS NOT NULL AND r.kind = 'train' AND "
             "json_valid(r.params_json) AND json_extract(r.params_json, '$.model_id') = l.ref")
        args: tuple[Any, ...] = ()
        if source is not None:
            q += " WHERE l.source = ?"
            args = (source,)
        return self.query(q + " ORDER BY l.id", args)

    def charges(self, source: str | None = None) -> list[Charge]:
        q = "SELECT source, at, epsilon, delta, mechanism, what, ref FROM ledger"
        args: tuple[Any, ...] = ()
        if source is not None:
            q += " WHERE source = ?"
            args = (source,)
        with self.connect() as conn:
            rows = conn.execute(q + " ORDER BY id", args).fetchall()
        return [Charge(*tuple(r)) for r in rows]

    # ---- records ------------------------------------------------------------------------------
    def insert(self, table: str, record: dict[str, Any]) -> None:
        """Insert one record (dict values are stored as JSON) in its own transaction."""
        with self.transaction() as conn:
            self._insert_in(conn, table, record)

    def _insert_in(self, conn: sqlite3.Connection, table: str, record: dict[str, Any]) -> None:
        """Insert one record inside an open transaction (every insert goes through here, charge_many's run too)."""
        if table not in {"sources", "models", "runs", "datasets"}:
            raise ValueError(f"unknown table {table}")
        record = dict(record)
        col = _PATH_COLUMNS.get(table)
        if col and record.get(col) is not None:
            record[col] = self.rel(record[col])
        if table == "runs" and record.get("status") == "running" and "pid" not in record:
            record.update(pid=os.getpid(), host=_hostname(), proc_start=_process_start(os.getpid()))
        cols = list(record)
        values = [json.dumps(v, default=str) if isinstance(v, (dict, list)) else v for v in record.values()]
        conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})", values)

    def update_run(self, run_id: str, status: str, result: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, result_json = ? WHERE id = ?",
                (status, now_iso(), json.dumps(result, default=str), run_id),
            )

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows as dicts; stored workspace paths (models.path, datasets.dir, sources.data_path) come back absolute."""
        with self.connect() as conn:
            rows = [dict(r) for r in conn.execute(sql, args).fetchall()]
        for row in rows:
            for key in _PATH_KEYS.intersection(row):
                if isinstance(row[key], str) and row[key]:
                    row[key] = str(self.abs(row[key]))
        return rows

    def get(self, table: str, key: str, value: Any) -> dict[str, Any] | None:
        if table not in {"sources", "models", "runs", "datasets", "sessions"}:
            raise ValueError(f"unknown table {table}")
        rows = self.query(f"SELECT * FROM {table} WHERE {key} = ?", (value,))
        return rows[0] if rows else None

    def latest_dataset(self, session: str | None = None) -> dict[str, Any] | None:
        if session:
            rows = self.query("SELECT * FROM datasets WHERE session = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (session,))
            if rows:
                return rows[0]
        rows = self.query("SELECT * FROM datasets ORDER BY created_at DESC, rowid DESC LIMIT 1")
        return rows[0] if rows else None

    # ---- sessions -----------------------------------------------------------------------------
    def load_session(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        row = self.get("sessions", "name", name)
        if row is None:
            return {}, []
        return json.loads(row["state_json"]), json.loads(row["history_json"])

    def save_session(self, name: str, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        ts = now_iso()
        with self.transaction() as conn:
            conn.execute(
                """INSERT INTO sessions (name, created_at, updated_at, state_json, history_json)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET updated_at = excluded.updated_at,
                       state_json = excluded.state_json, history_json = excluded.history_json""",
                (name, ts, ts, json.dumps(state, default=str), json.dumps(history, default=str)),
            )


def _check(source: str, eps: float, delta: float, spent_eps: float, spent_delta: float, b_eps: float, b_delta: float) -> None:
    left_eps, left_delta = max(b_eps - spent_eps, 0.0), max(b_delta - spent_delta, 0.0)
    if eps > left_eps + 1e-12 or delta > left_delta + 1e-18:
        raise BudgetExceeded(
            f"privacy budget of '{source}' would be exceeded: asked epsilon={eps:g}, delta={delta:.3g}; "
            f"spent epsilon={spent_eps:g} of {b_eps:g}, delta={spent_delta:.3g} of {b_delta:.3g}; "
            f"left epsilon={left_eps:g}, delta={left_delta:.3g}. Reuse a trained model or ask for a smaller epsilon."
        )


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), so a reused pid is not taken for the run's."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _process_alive(pid: int, proc_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if proc_start is not None:
        now = _process_start(pid)
        if now is not None and now != proc_start:
            return False  # the pid was reused by another process
    if Path(f"/proc/{pid}/stat").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                return False  # a zombie: it has ended, only its parent has not collected it
        except (OSError, IndexError):
            pass
    return True
