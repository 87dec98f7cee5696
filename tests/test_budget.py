"""The privacy ledger: one transaction per training, concurrent charges, `synthehr budget`.

Uses the made-up fixture source (tests/_dpgan_fixture.py); never a real row.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthehr.configs.settings import load_settings
from synthehr.tools.base import ToolInputError
from synthehr.tools.deps import build_deps
from synthehr.tools.privacy_budget import PrivacyBudgetArgs, budget_report, privacy_budget
from synthehr.tools.store.workspace import BudgetExceeded, Workspace
from tests._dpgan_fixture import write_source

SRC = "fixture-clinic"


def _lines(tag: str, eps: float = 0.5) -> list[dict]:
    return [{"epsilon": eps * 0.5, "delta": 1e-7, "mechanism": "laplace-histogram", "what": f"{tag} pre"},
            {"epsilon": eps * 0.5, "delta": 1e-7, "mechanism": "dp-sgd-opacus-prv", "what": f"{tag} sgd"}]


def _run(run_id: str, model_id: str) -> dict:
    return {"id": run_id, "kind": "train", "started_at": "2026-01-01T00:00:00+00:00", "status": "running",
            "params_json": {"model_id": model_id}}


def test_charge_many_is_all_or_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.charge_many("s", _lines("a", 1.0), 1.5, 1e-4, ref="m1", run=_run("r1", "m1"))
    with pytest.raises(BudgetExceeded):  # 1.0 + 1.0 > 1.5: neither line, nor the run, is written
        ws.charge_many("s", _lines("b", 1.0), 1.5, 1e-4, ref="m2", run=_run("r2", "m2"))
    assert [c.what for c in ws.charges("s")] == ["a pre", "a sgd"]
    assert [r["id"] for r in ws.query("SELECT id FROM runs")] == ["r1"]
    # A failing insert (duplicate run id) rolls the charges back too.
    with pytest.raises(Exception):
        ws.charge_many("s", _lines("c", 0.2), 10, 1e-4, ref="m1", run=_run("r1", "m1"))
    assert len(ws.charges("s")) == 2
    with pytest.raises(ValueError):
        ws.charge_many("s", [{"epsilon": -1, "delta": 0, "mechanism": "x", "what": "neg"}], 10, 1)


def _trainer(root: str, worker: int, results: "mp.Queue") -> None:
    ws = Workspace(root)
    ok = 0
    for i in range(8):
        mid = f"m-{worker}-{i}"
        try:
            ws.charge_many("shared", _lines(mid, 1.0), 10.0, 1.0, ref=mid, run=_run(f"r-{worker}-{i}", mid))
            ok += 1
        except BudgetExceeded:
            pass
        # A single charge from another mechanism races with the trainings.
        try:
            ws.charge("shared", 0.25, 0.0, "other", f"single {worker}-{i}", 10.0, 1.0)
        except BudgetExceeded:
            pass
    results.put(ok)


def test_concurrent_trainings_never_split_or_overspend(tmp_path: Path) -> None:
    root = str(tmp_path / "ws")
    Workspace(root)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_trainer, args=(root, w, q)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    trained = sum(q.get(timeout=10) for _ in procs)
    ws = Workspace(root)
    eps, _ = ws.spent("shared")
    assert eps <= 10.0 + 1e-9
    rows = ws.ledger("shared")
    by_ref: dict[str, list[dict]] = {}
    for r in rows:
        if r["ref"]:
            by_ref.setdefault(r["ref"], []).append(r)
    # Every training has both of its lines (never half) and its run; none without the other.
    assert len(by_ref) == trained and trained >= 1
    assert all(len(v) == 2 and all(x["run_id"] == f"r-{k[2:]}" for x in v) for k, v in by_ref.items())
    assert len(ws.query("SELECT id FROM runs")) == trained
    # The budget is used up: whatever is left is less than the smallest charge.
    assert 10.0 - eps < 0.25 + 1e-9


def _deps(tmp_path: Path):
    settings = load_settings(env={"SYNTHEHR_HOME": str(tmp_path / "ws")})
    deps = build_deps(settings=settings)
    data, meta = write_source(tmp_path / "src", n=200)
    deps.catalog.register(data, meta)
    return deps


def test_budget_report_links_charges_to_runs_and_keeps_failed_charges(tmp_path: Path) -> None:
    deps = _deps(tmp_path)
    ws = deps.workspace
    ws.charge_many(SRC, _lines("ok", 1.0), 10, 1e-4, ref="m-ok", run=_run("r-ok", "m-ok"))
    ws.update_run("r-ok", "ok", {})
    ws.charge_many(SRC, _lines("bad", 2.0), 10, 1e-4, ref="m-bad", run=_run("r-bad", "m-bad"))
    ws.update_run("r-bad", "failed", {"error": "Killed"})
    rows = budget_report(deps, SRC)
    assert len(rows) == 1
    r = rows[0]
    assert r["spent_epsilon"] == pytest.approx(3.0) and r["left_epsilon"] == pytest.approx(7.0)
    assert r["budget_epsilon"] == deps.settings.privacy.source_budget_epsilon
    assert [(c["run_id"], c["status"]) for c in r["charges"]] == [("r-ok", "ok"), ("r-ok", "ok"),
                                                                   ("r-bad", "failed"), ("r-bad", "failed")]
    assert r["failed_run_charges"] == 2 and "stays spent" in r["note"]
    assert {c["mechanism"] for c in r["charges"]} == {"laplace-histogram", "dp-sgd-opacus-prv"}
    text = privacy_budget(deps, PrivacyBudgetArgs(source=SRC)).text
    assert "failed runs and stay spent" in text and "left 7" in text
    with pytest.raises(ToolInputError, match="fixture-clinic"):
        budget_report(deps, "no-such-source")
    # No source named: every registered source is listed.
    assert SRC in [x["source"] for x in budget_report(deps)]


def test_failed_training_keeps_both_lines_in_one_charge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import synthehr.tools.engines.dpgan as dpgan
    from synthehr.tools.train_generator import train_model

    deps = _deps(tmp_path)

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        # Both lines and the running run are already committed when the engine starts.
        led = deps.workspace.ledger(SRC)
        assert len(led) == 2 and {r["status"] for r in led} == {"running"}
        raise RuntimeError("killed")

    monkeypatch.setattr(dpgan, "train_dpgan", boom, raising=False)
    with pytest.raises(RuntimeError):
        train_model(deps, SRC, 1.0, seed=1)
    r = budget_report(deps, SRC)[0]
    assert r["spent_epsilon"] == pytest.approx(1.0) and r["failed_run_charges"] == 2
    assert {c["status"] for c in r["charges"]} == {"failed"}


def test_budget_cli_json_and_table(tmp_path: Path) -> None:
    deps = _deps(tmp_path)
    deps.workspace.charge_many(SRC, _lines("bad", 2.0), 10, 1e-4, ref="m-bad", run=_run("r-bad", "m-bad"))
    deps.workspace.update_run("r-bad", "failed", {"error": "Killed"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHEHR_")}
    env.update({"SYNTHEHR_HOME": str(tmp_path / "ws"), "COLUMNS": "200"})
    cmd = [sys.executable, "-m", "synthehr", "budget"]
    r = subprocess.run([*cmd, SRC, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    src = json.loads(r.stdout)["sources"][0]
    assert src["source"] == SRC and src["spent_epsilon"] == pytest.approx(2.0)
    assert [c["run_id"] for c in src["charges"]] == ["r-bad", "r-bad"]
    assert all(set(c) >= {"run_id", "mechanism", "epsilon", "delta", "status", "at"} for c in src["charges"])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "r-bad" in r.stdout and "charge stays spent" in r.stdout and "nhanes-2017-2018" in r.stdout
    r = subprocess.run([*cmd, "mimic"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr
