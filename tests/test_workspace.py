import multiprocessing as mp
import os
import sqlite3
from pathlib import Path

import pytest

from synthehr.tools.store.workspace import SCHEMA_VERSION, BudgetExceeded, Workspace, atomic_path, atomic_write_text


def test_creates_layout_and_migrates_empty_dir(tmp_path):
    root = tmp_path / "fresh"
    ws = Workspace(root)
    for d in ("models", "datasets", "chroma", "sources"):
        assert (root / d).is_dir()
    assert ws.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(root / "synthehr.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert {"sources", "models", "runs", "datasets", "ledger", "sessions"} <= tables
    assert mode == "wal"


def test_reopening_keeps_data_and_version(tmp_path):
    ws = Workspace(tmp_path)
    ws.charge("src", 0.5, 1e-6, "test", "first", 10, 1e-4)
    ws2 = Workspace(tmp_path)
    assert ws2.schema_version() == SCHEMA_VERSION
    assert ws2.spent("src") == (0.5, 1e-6)


def test_refuses_newer_schema(tmp_path):
    Workspace(tmp_path)
    with sqlite3.connect(tmp_path / "synthehr.db") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer synthehr"):
        Workspace(tmp_path)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "card.json"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert [f.name for f in p.parent.iterdir()] == ["card.json"]


def test_atomic_path_failure_keeps_old_file(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["data.csv"]


def test_ledger_records_each_charge_and_refuses_overspend(tmp_path):
    ws = Workspace(tmp_path)
    ws.charge("nhanes", 3.0, 1e-5, "gaussian", "histogram", 10, 1e-4)
    ws.charge("nhanes", 6.0, 1e-5, "dp-sgd", "discriminator", 10, 1e-4)
    with pytest.raises(BudgetExceeded) as e:
        ws.charge("nhanes", 2.0, 1e-5, "dp-sgd", "again", 10, 1e-4)
    assert "left epsilon=1" in str(e.value)
    charges = ws.charges("nhanes")
    assert [c.what for c in charges] == ["histogram", "discriminator"]
    assert ws.spent("nhanes") == pytest.approx((9.0, 2e-5))
    # Another source has its own budget.
    ws.charge("other", 9.5, 0, "dp-sgd", "x", 10, 1e-4)
    with pytest.raises(ValueError):
        ws.charge("other", -1, 0, "x", "negative", 10, 1e-4)


def test_check_budget_refuses_delta_overspend(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(BudgetExceeded, match="delta"):
        ws.check_budget("s", 1.0, 1e-3, 10, 1e-4)


def test_sessions_round_trip(tmp_path):
    ws = Workspace(tmp_path)
    assert ws.load_session("s1") == ({}, [])
    ws.save_session("s1", {"last_dataset": "ds-1"}, [{"user": "hi"}])
    ws.save_session("s1", {"last_dataset": "ds-2"}, [{"user": "hi"}, {"user": "again"}])
    state, history = Workspace(tmp_path).load_session("s1")
    assert state == {"last_dataset": "ds-2"} and len(history) == 2


def test_contains_refuses_paths_outside(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert ws.contains(ws.datasets_dir / "x.csv")
    assert not ws.contains(ws.root / ".." / "elsewhere")
    assert not ws.contains("/etc/passwd")


def _writer(root: str, source: str, n: int) -> None:
    ws = Workspace(root)
    for i in range(n):
        ws.charge(source, 0.01, 0, "test", f"w{i}", 100, 1)
        ws.insert("runs", {"id": f"{source}-{i}", "kind": "test", "started_at": "t", "status": "ok"})


def test_two_concurrent_writers(tmp_path):
    root = str(tmp_path / "ws")
    Workspace(root)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, s, 40)) for s in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ws = Workspace(root)
    assert len(ws.charges("a")) == 40 and len(ws.charges("b")) == 40
    assert len(ws.query("SELECT id FROM runs")) == 80


def _spender(root: str, results: "mp.Queue") -> None:
    ws = Workspace(root)
    ok = 0
    for _ in range(10):
        try:
            ws.charge("shared", 1.0, 0, "test", "spend", 10, 1)
            ok += 1
        except BudgetExceeded:
            pass
    results.put(ok)


def test_concurrent_spenders_never_exceed_budget(tmp_path):
    root = str(tmp_path / "ws")
    Workspace(root)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_spender, args=(root, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    total = q.get(timeout=10) + q.get(timeout=10)
    assert total == 10
    assert Workspace(root).spent("shared")[0] == pytest.approx(10.0)
