"""Fast tests of the web app (agent/web/app.py): path safety, the access token, binding, and a streamed turn.

The agent is replaced by a small stand-in with run_turn's interface, so these run in a second or two;
tests/test_web_browser.py drives the real server, agent and tools in a browser.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from synthehr.agent.web.app import (
    PathRefused,
    WebProgress,
    check_bind,
    create_app,
    host_name,
    is_loopback,
    safe_file,
    token_matches,
)
from synthehr.configs.settings import ConfigError, Settings
from synthehr.tools.store.workspace import Workspace

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


# ---- fixtures ------------------------------------------------------------------------------------
def _make_dataset(ws: Workspace, ds_id: str = "ds-test-1", session: str = "web-a") -> Path:
    """A synthetic data set laid out as generate_cohort writes it (made-up values, no real rows)."""
    d = ws.datasets_dir / ds_id
    (d / "plots").mkdir(parents=True)
    (d / "data.csv").write_text("age,hba1c\n61,7.1\n55,6.8\n", encoding="utf-8")
    (d / "data.parquet").write_bytes(b"PAR1fakePAR1")
    (d / "card.md").write_text("# Data card\n", encoding="utf-8")
    (d / "card.json").write_text("{}", encoding="utf-8")
    (d / "plots" / "hba1c.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    card = {
        "dataset_id": ds_id,
        "source": {"name": "nhanes-2017-2018", "title": "NHANES 2017-2018", "url": "https://wwwn.cdc.gov/nchs/nhanes/"},
        "condition": {"id": "type-2-diabetes", "name": "Type 2 diabetes"},
        "model": {"id": "m-1", "epsilon": 0.97, "delta": 1e-5, "accountant": "prv", "target_epsilon": 1.0},
        "n_rows": 2,
        "columns": [{"name": "age", "label": "Age"}, {"name": "hba1c", "label": "HbA1c"}],
        "missing_observations": ["Urine albumin"],
    }
    ws.insert("datasets", {"id": ds_id, "run_id": "r-1", "model_id": "m-1", "source": "nhanes-2017-2018",
                           "condition": "type-2-diabetes", "n_rows": 2, "dir": str(d), "epsilon": 0.97, "delta": 1e-5,
                           "created_at": "2026-11-26T18:00:00+00:00", "session": session, "card_json": card})
    return d


@pytest.fixture
def ws(settings: Settings) -> Workspace:
    return Workspace(settings.workspace.path)


@dataclass
class FakeEvent:
    kind: str
    tool: str | None = None
    args: dict[str, Any] | None = None
    text: str = ""
    files: list[str] = field(default_factory=list)


@dataclass
class FakeResult:
    answer: str
    steps: list[dict[str, Any]]
    files: list[str]


def fake_run_turn(deps: Any, llm: Any, text: str, *, registry: Any = None, on_event: Any = None) -> FakeResult:
    """Stands in for synthehr.agent.loop.run_turn: one generate_cohort step with progress, then an answer."""
    d = _make_dataset(deps.workspace, session=deps.session.name)
    files = [str(d / "data.csv"), str(d / "data.parquet"), str(d / "plots" / "hba1c.png")]
    args = {"condition": "type 2 diabetes", "n": 2}
    on_event(FakeEvent("thought", text="I should generate the cohort."))
    on_event(FakeEvent("action", tool="generate_cohort", args=args))
    deps.progress.start("Training DP-GAN", total=3)
    for _ in range(3):
        deps.progress.update(1, epsilon=0.3)
    deps.progress.finish()
    obs = "Generated 2 records (dataset ds-test-1, epsilon 0.97). Source: https://wwwn.cdc.gov/nchs/nhanes/"
    on_event(FakeEvent("observation", tool="generate_cohort", text=obs, files=files))
    answer = f"Done: {text}. See https://diabetesjournals.org/care for the ADA standards."
    on_event(FakeEvent("answer", text=answer))
    steps = [{"tool": "generate_cohort", "args": args, "observation": obs, "files": files, "ok": True,
              "thought": "I should generate the cohort.",
              "data": {"dataset_id": "ds-test-1", "citations": [{"title": "ADA Standards of Care", "section": "2",
                                                                 "url": "https://diabetesjournals.org/care/sc"}]}}]
    _save_turn(deps, text, steps, answer, files)
    return FakeResult(answer, steps, files)


def _save_turn(deps: Any, text: str, steps: list[dict[str, Any]], answer: str, files: list[str]) -> None:
    """What the real loop's session keeps of a turn (agent/session.py): short observations, no data, no thoughts."""
    state, history = deps.workspace.load_session(deps.session.name)
    history.append({"user": text, "answer": answer, "files": files, "at": "2026-11-26T18:00:00+00:00",
                    "steps": [{"tool": s["tool"], "args": s["args"], "observation": s["observation"][:400],
                               "files": s["files"]} for s in steps]})
    deps.workspace.save_session(deps.session.name, state, history)


def _client(settings: Settings, **kw: Any) -> TestClient:
    kw.setdefault("run_turn", fake_run_turn)
    kw.setdefault("llm", object())
    return TestClient(create_app(settings, **kw), base_url="http://127.0.0.1:7860")


# ---- path safety -----------------------------------------------------------------------------------
def test_safe_file_serves_files_inside(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    (root / "ds1").mkdir(parents=True)
    (root / "ds1" / "data.csv").write_text("a\n1\n")
    assert safe_file(root, "ds1/data.csv") == (root / "ds1" / "data.csv").resolve()


@pytest.mark.parametrize("bad", ["../secret.txt", "ds1/../../secret.txt", "ds1/./data.csv", "/etc/passwd",
                                 "ds1\\..\\..\\secret.txt", "ds1/.data.csv.tmp", ".hidden", "", "ds1/\x00x"])
def test_safe_file_refuses_escapes(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "datasets"
    (root / "ds1").mkdir(parents=True)
    (root / "ds1" / "data.csv").write_text("a\n1\n")
    (root / "ds1" / ".data.csv.tmp").write_text("partial")
    (tmp_path / "secret.txt").write_text("secret")
    with pytest.raises(PathRefused):
        safe_file(root, bad)


def test_safe_file_refuses_symlink_out_but_allows_symlink_in(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    (root / "ds1").mkdir(parents=True)
    (root / "ds1" / "data.csv").write_text("a\n1\n")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "ds1" / "leak.csv")
    os.symlink(tmp_path, root / "dirlink")
    os.symlink(root / "ds1" / "data.csv", root / "ds1" / "alias.csv")
    with pytest.raises(PathRefused):
        safe_file(root, "ds1/leak.csv")
    with pytest.raises(PathRefused):
        safe_file(root, "dirlink/secret.txt")
    assert safe_file(root, "ds1/alias.csv").read_text() == "a\n1\n"


def test_safe_file_missing_is_not_found(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    (root / "ds1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        safe_file(root, "ds1/nope.csv")
    with pytest.raises(FileNotFoundError):
        safe_file(root, "ds1")  # a folder is not a file


def test_http_files_only_from_datasets(settings: Settings, ws: Workspace) -> None:
    _make_dataset(ws)
    (ws.root / "secret.txt").write_text("not for the web")
    outside = ws.root.parent / "outside.txt"
    outside.write_text("outside")
    os.symlink(outside, ws.datasets_dir / "ds-test-1" / "link.csv")
    c = _client(settings)
    ok = c.get("/files/ds-test-1/data.csv")
    assert ok.status_code == 200
    assert ok.text.startswith("age,hba1c")
    assert "attachment" in ok.headers["content-disposition"]
    assert c.get("/files/ds-test-1/plots/hba1c.png").headers["content-type"] == "image/png"
    assert c.get("/files/ds-test-1/nope.csv").status_code == 404
    assert c.get("/files/ds-test-1/link.csv").status_code == 403
    # '..' sent percent-encoded (a browser would normalise a literal one away before sending)
    for path in ("/files/%2e%2e/secret.txt", "/files/ds-test-1/%2E%2E/%2E%2E/secret.txt", "/files/%2e%2e/synthehr.db",
                 "/files/..%2fsecret.txt", "/files/%2fetc%2fpasswd"):
        r = c.get(path)
        assert r.status_code in (403, 404), path
        assert "not for the web" not in r.text
    assert c.get("/files/%2e%2e/secret.txt").status_code == 403
    # the database and registered sources are never served, even though they are in the workspace
    assert c.get("/files/%2e%2e/synthehr.db").status_code == 403


# ---- binding and the token -----------------------------------------------------------------------
def test_loopback_detection() -> None:
    for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(h)
    for h in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        assert not is_loopback(h)
    assert host_name("127.0.0.1:7860") == "127.0.0.1"
    assert host_name("[::1]:7860") == "::1"
    assert host_name("localhost") == "localhost"


def test_binding_elsewhere_needs_a_token() -> None:
    check_bind("127.0.0.1", None, "SYNTHEHR_TOKEN")
    check_bind("0.0.0.0", "s3cret-token", "SYNTHEHR_TOKEN")
    with pytest.raises(ConfigError, match="SYNTHEHR_TOKEN"):
        check_bind("0.0.0.0", None, "SYNTHEHR_TOKEN")
    with pytest.raises(ConfigError, match="token_env"):
        check_bind("192.168.1.5", None, None)


def test_create_app_refuses_public_bind_without_token(settings: Settings) -> None:
    with pytest.raises(ConfigError):
        create_app(settings, host="0.0.0.0", token=None)


def test_token_compare() -> None:
    assert token_matches(None, None)
    assert token_matches("abc", "abc")
    assert not token_matches("abc", "abd")
    assert not token_matches("abc", None)
    assert not token_matches("abc", "")


def test_token_required_on_every_route(settings: Settings, ws: Workspace) -> None:
    _make_dataset(ws)
    c = TestClient(create_app(settings, host="0.0.0.0", token="tok-123", run_turn=fake_run_turn, llm=object()),
                   base_url="http://10.0.0.5:7860")
    for path in ("/", "/app.js", "/api/datasets", "/files/ds-test-1/data.csv"):
        assert c.get(path).status_code == 401, path
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert c.get("/api/datasets", headers={"Authorization": "Bearer tok-123"}).status_code == 200
    assert c.post("/api/chat", json={"text": "hi"}).status_code == 401
    # ?token= moves into an HttpOnly cookie and the address bar loses it
    r = c.get("/?token=tok-123", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert c.get("/api/datasets").status_code == 200  # the cookie now carries it
    assert c.get("/files/ds-test-1/data.csv").status_code == 200


def test_loopback_without_token_refuses_foreign_host_and_non_json_posts(settings: Settings) -> None:
    c = _client(settings)
    assert c.get("/healthz").status_code == 200
    assert c.get("/healthz", headers={"Host": "localhost:7860"}).status_code == 200
    assert c.get("/healthz", headers={"Host": "evil.example:7860"}).status_code == 403  # DNS rebinding
    r = c.post("/api/chat", content="text=hi", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415


def test_page_is_self_contained(settings: Settings) -> None:
    c = _client(settings)
    page = c.get("/")
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    for asset in ("/", "/app.js", "/app.css"):
        body = c.get(asset).text
        assert "googleapis" not in body and "cdn." not in body and "http://" not in body.replace("http://\"", "")


# ---- a turn, streamed ----------------------------------------------------------------------------
def _events(resp: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def test_chat_streams_steps_progress_and_artifacts(settings: Settings, ws: Workspace) -> None:
    c = _client(settings)
    r = c.post("/api/chat", json={"session": "web-a", "text": "generate 2 diabetes patients"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    events = _events(r)
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "end"
    kinds = [e.get("kind") for e in events if e["type"] == "step"]
    assert kinds == ["thought", "action", "observation"]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[0]["state"] == "start" and progress[-1]["state"] == "finish" and progress[-1]["done"] == 3
    (answer,) = [e for e in events if e["type"] == "answer"]
    assert answer["text"].startswith("Done: generate 2 diabetes patients")
    assert answer["steps"][0]["tool"] == "generate_cohort"
    (ds,) = answer["datasets"]
    assert ds["id"] == "ds-test-1" and ds["epsilon"] == pytest.approx(0.97) and ds["source_title"] == "NHANES 2017-2018"
    assert ds["links"]["csv"] == "/files/ds-test-1/data.csv"
    assert ds["links"]["parquet"] == "/files/ds-test-1/data.parquet"
    assert [p["url"] for p in answer["plots"]] == ["/files/ds-test-1/plots/hba1c.png"]
    urls = [x["url"] for x in answer["citations"]]
    assert "https://wwwn.cdc.gov/nchs/nhanes/" in urls and "https://diabetesjournals.org/care" in urls
    assert c.get(ds["links"]["csv"]).status_code == 200


def test_chat_user_error_and_bug(settings: Settings) -> None:
    from synthehr.tools.base import ToolInputError

    def user_error(*a: Any, **k: Any) -> Any:
        raise ToolInputError("unknown condition 'x'; valid: type-2-diabetes, copd")

    def bug(*a: Any, **k: Any) -> Any:
        raise RuntimeError("row 17: age=61 hba1c=7.1")  # must not reach the page

    r = _client(settings, run_turn=user_error).post("/api/chat", json={"session": "web-b", "text": "x"})
    (err,) = [e for e in _events(r) if e["type"] == "error"]
    assert "valid: type-2-diabetes" in err["text"]
    r = _client(settings, run_turn=bug).post("/api/chat", json={"session": "web-b", "text": "x"})
    (err,) = [e for e in _events(r) if e["type"] == "error"]
    assert "RuntimeError" in err["text"] and "hba1c" not in err["text"]


def test_chat_rejects_bad_input(settings: Settings) -> None:
    c = _client(settings)
    assert c.post("/api/chat", json={"session": "web-a", "text": "  "}).status_code == 400
    assert c.post("/api/chat", json={"session": "../x", "text": "hi"}).status_code == 400


def test_sidebar_lists_datasets_and_sessions(settings: Settings, ws: Workspace) -> None:
    _make_dataset(ws)
    ws.save_session("web-a", {}, [{"user": "generate 2 diabetes patients", "steps": [], "answer": "ok", "files": []}])
    c = _client(settings)
    (ds,) = c.get("/api/datasets").json()["datasets"]
    assert (ds["id"], ds["source"], ds["epsilon"], ds["condition"]) == ("ds-test-1", "nhanes-2017-2018", 0.97, "Type 2 diabetes")
    assert [p["url"] for p in ds["plots"]] == ["/files/ds-test-1/plots/hba1c.png"]
    sessions = c.get("/api/sessions").json()["sessions"]
    assert sessions[0]["name"] == "web-a" and sessions[0]["turns"] == 1
    assert sessions[0]["title"] == "generate 2 diabetes patients"
    hist = c.get("/api/sessions/web-a").json()
    assert hist["turns"][0]["answer"] == "ok"
    assert hist["turns"][0]["text"] == "ok"  # the page reads `text`, as in the live answer event
    new = c.post("/api/sessions", json={}).json()["name"]
    assert new.startswith("web-") and new != c.post("/api/sessions", json={}).json()["name"]


def test_web_progress_throttles_but_reports_start_and_finish() -> None:
    got: list[dict[str, Any]] = []
    p = WebProgress(got.append, min_interval=3600)
    p.start("train", total=100)
    for _ in range(100):
        p.update(1, loss=0.5)
    p.finish()
    assert got[0]["state"] == "start" and got[-1]["state"] == "finish"
    assert len(got) <= 4  # start, first update, last update, finish


def test_serve_command_refuses_public_bind_without_token(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                                           workspace_dir: Path) -> None:
    from synthehr.agent.cli.main import main

    monkeypatch.setenv("SYNTHEHR_HOME", str(workspace_dir))
    monkeypatch.delenv("SYNTHEHR_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--host", "0.0.0.0", "--port", "7999"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "access token" in err and "SYNTHEHR_TOKEN" in err and "Traceback" not in err


def test_turn_artifacts_provenance_citations_and_stats_plots(ws: Workspace) -> None:
    from synthehr.agent.web.app import turn_artifacts

    d = _make_dataset(ws)
    export = d / "fhir.ndjson"
    export.write_text("{}\n")
    steps = [
        {"tool": "explain_provenance", "args": {"question": "which sources?", "dataset": "last"},
         "observation": "[1] NHANES 2017-2018 (https://wwwn.cdc.gov/nchs/nhanes/): ...", "files": [],
         "data": {"dataset_id": "ds-test-1", "citations": [
             {"n": 1, "title": "NHANES 2017-2018", "section": "Overview", "url": "https://wwwn.cdc.gov/nchs/nhanes/"},
             {"n": 2, "title": "DP-SGD", "section": "Accounting", "url": None}]}},
        {"tool": "cohort_stats", "args": {"dataset": "last"}, "observation": "HbA1c mean 7.1 %",
         "files": [str(d / "plots" / "hba1c.png")], "data": {"dataset_id": "ds-test-1"}},
        {"tool": "export_dataset", "args": {}, "observation": "wrote FHIR", "files": [str(export)], "data": {}},
    ]
    arts = turn_artifacts(ws, steps, "Based on NHANES [1].", [])
    assert arts["datasets"] == []  # explaining or summarising a data set does not repeat its card
    assert [p["url"] for p in arts["plots"]] == ["/files/ds-test-1/plots/hba1c.png"]
    assert arts["downloads"] == [{"url": "/files/ds-test-1/fhir.ndjson", "name": "fhir.ndjson", "dataset": "ds-test-1"}]
    assert arts["citations"] == [
        {"url": "https://wwwn.cdc.gov/nchs/nhanes/", "title": "NHANES 2017-2018 — Overview"},
        {"url": None, "title": "DP-SGD — Accounting"},
    ]


def test_answer_paths_become_links_to_served_files(ws: Workspace) -> None:
    from synthehr.agent.web.app import link_files

    d = _make_dataset(ws)
    text = (f"Files: {d / 'data.csv'}, {d / 'card.md'}. Also datasets/ds-test-1/data.parquet. "
            f"Not served: {ws.root / 'synthehr.db'}, datasets/ds-test-1/missing.csv, /etc/datasets/x/y.csv")
    out = link_files(text, ws.root)
    assert "[ds-test-1/data.csv](/files/ds-test-1/data.csv)" in out
    assert "[ds-test-1/card.md](/files/ds-test-1/card.md)." in out
    assert "[ds-test-1/data.parquet](/files/ds-test-1/data.parquet)." in out
    assert "Not served: synthehr.db, datasets/ds-test-1/missing.csv" in out  # relative, not linked
    assert "/etc/datasets/x/y.csv" in out and "](/files/x/y.csv)" not in out
    assert str(d) not in out  # no server paths left for served files


def test_workspace_paths_are_shown_relative(ws: Workspace) -> None:
    from synthehr.agent.web.app import link_files, step_for_page

    d = _make_dataset(ws)
    out = link_files(f"1 plot(s) in {d / 'plots'}: hba1c.png", ws.root)
    assert out == "1 plot(s) in datasets/ds-test-1/plots: hba1c.png"
    step = step_for_page({"tool": "cohort_stats", "args": {}, "observation": f"wrote {d / 'plots' / 'hba1c.png'}"}, ws.root)
    assert step["observation"] == "wrote datasets/ds-test-1/plots/hba1c.png"


def test_svg_plots_are_sandboxed(settings: Settings, ws: Workspace) -> None:
    d = _make_dataset(ws)
    (d / "plots" / "x.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    r = _client(settings).get("/files/ds-test-1/plots/x.svg")
    assert r.status_code == 200 and "sandbox" in r.headers["content-security-policy"]


# ---- reload and reopen ---------------------------------------------------------------------------
def test_reopen_restores_answer_steps_card_plots_and_sources(settings: Settings, ws: Workspace) -> None:
    """The history sends the answer as `text` (what the page reads), with the steps and their thoughts, the
    data-set card, plots with alt text and the sources, although the session keeps no step data."""
    c = _client(settings)
    live = [e for e in _events(c.post("/api/chat", json={"session": "web-r", "text": "generate 2 diabetes patients"}))
            if e["type"] == "answer"][0]
    (turn,) = c.get("/api/sessions/web-r").json()["turns"]
    assert turn["user"] == "generate 2 diabetes patients"
    assert turn["text"] == live["text"] and turn["text"].startswith("Done: generate 2 diabetes patients")
    (step,) = turn["steps"]
    assert step["tool"] == "generate_cohort" and step["thought"] == "I should generate the cohort."
    assert [d["id"] for d in turn["datasets"]] == ["ds-test-1"]
    assert turn["datasets"][0]["links"]["csv"] == "/files/ds-test-1/data.csv"
    assert turn["plots"] == live["plots"] and turn["plots"][0]["alt"]
    assert turn["citations"] == live["citations"]
    assert "https://diabetesjournals.org/care/sc" in [x["url"] for x in turn["citations"]]  # only in the step's data
    # a turn made elsewhere (the CLI: no page record) is rebuilt from the session history
    ws.save_session("cli-1", {}, [{"user": "u", "answer": "see datasets/ds-test-1/data.csv", "files": [],
                                   "steps": [{"tool": "cohort_stats", "args": {}, "observation": "o",
                                              "files": [str(ws.datasets_dir / "ds-test-1" / "plots" / "hba1c.png")]}]}])
    (cli,) = c.get("/api/sessions/cli-1").json()["turns"]
    assert "(/files/ds-test-1/data.csv)" in cli["text"] and cli["plots"][0]["url"].endswith("hba1c.png")


# ---- request bodies --------------------------------------------------------------------------------
def test_request_bodies_are_limited_and_must_be_objects(workspace_dir: Path) -> None:
    from synthehr.configs.settings import load_settings

    small = load_settings(env={"SYNTHEHR_HOME": str(workspace_dir), "SYNTHEHR_SERVER__MAX_BODY_BYTES": "2000"})
    assert small.server.max_body_bytes == 2000
    assert load_settings(env={"SYNTHEHR_HOME": str(workspace_dir)}).server.max_body_bytes == 1_000_000
    calls: list[str] = []

    def run_turn(deps: Any, llm: Any, text: str, **kw: Any) -> FakeResult:
        calls.append(text)
        return FakeResult("ok", [], [])

    c = _client(small, run_turn=run_turn)
    big = json.dumps({"session": "web-a", "text": "x" * 5000})
    r = c.post("/api/chat", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"x" * 500

    r = c.post("/api/chat", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    for body, code in (("[1, 2]", 422), ('"text"', 422), ("null", 422), ("3", 422), ("{not json", 400)):
        r = c.post("/api/chat", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == code, body
        assert "error" in r.json()
    assert c.post("/api/turns/abc/cancel", content="[]", headers={"Content-Type": "application/json"}).status_code == 422
    assert calls == []
    r = c.post("/api/chat", json={"session": "web-a", "text": "hi"})
    assert r.status_code == 200 and calls == ["hi"]


# ---- stopping a turn -------------------------------------------------------------------------------
def _training_turn(charged: list[str]) -> Any:
    """Like the real loop with train_generator: a thought, the action, the FULL charge, then a long training
    whose progress updates keep coming until something stops it."""

    def run_turn(deps: Any, llm: Any, text: str, *, registry: Any = None, on_event: Any = None) -> FakeResult:
        on_event(FakeEvent("thought", text="Training a generator first."))
        on_event(FakeEvent("action", tool="train_generator", args={"source": "nhanes-2017-2018"}))
        s = deps.settings.privacy
        deps.workspace.charge("nhanes-2017-2018", 1.0, 1e-6, "dp-sgd", "train m-1", s.source_budget_epsilon,
                              s.source_budget_delta, ref="m-1")
        charged.append("m-1")
        deps.progress.start("training DP-GAN", total=100_000)
        try:
            for _ in range(100_000):
                deps.progress.update(1, d_loss=0.69, g_loss=1.1, epsilon=0.1)
                time.sleep(0.002)
        finally:
            deps.progress.finish()
        raise AssertionError("the training was never stopped")

    return run_turn


def test_stop_button_cancels_a_running_training_and_keeps_its_charge(settings: Settings, ws: Workspace) -> None:
    charged: list[str] = []
    app = create_app(settings, run_turn=_training_turn(charged), llm=object())
    c = TestClient(app, base_url="http://127.0.0.1:7860")
    answers: list[Any] = []

    def press_stop() -> None:
        deadline = time.monotonic() + 20
        while not charged and time.monotonic() < deadline:
            time.sleep(0.02)
        (turn_id,) = list(app.state.web.turns)
        answers.append(c.post(f"/api/turns/{turn_id}/cancel", json={}))

    t = threading.Thread(target=press_stop)
    t.start()
    events = _events(c.post("/api/chat", json={"session": "web-s", "text": "train a generator"}))
    t.join()
    assert answers[0].status_code == 200 and answers[0].json() == {"cancelled": True, "tool_started": True}
    (done,) = [e for e in events if e["type"] == "cancelled"]
    assert done["tool_started"] is True and done["training_started"] is True and "stays on the ledger" in done["text"]
    assert not [e for e in events if e["type"] in ("answer", "error")]
    assert [ch.ref for ch in ws.charges()] == ["m-1"]  # the charge made before training is kept
    assert app.state.web.turns == {}
    assert ws.load_session("web-s")[1] == []  # a stopped turn is not part of the conversation
    assert c.post("/api/turns/nope/cancel", json={}).status_code == 404
    prog = [e for e in events if e["type"] == "progress"]
    assert prog and all("loss" not in json.dumps(e) for e in prog)
    assert prog[-1]["state"] == "stopped" and prog[-1]["detail"] == "stopped"  # not "done"


def test_abandoned_request_is_cancelled_before_it_charges(settings: Settings, ws: Workspace) -> None:
    """The page goes away while the model is still thinking: the turn ends at its next step, before the tool
    that would charge the budget starts."""
    import asyncio

    from synthehr.agent.web.app import WebState, _turn_stream

    charged: list[str] = []
    state = WebState(settings, llm=object(), run_turn=None)
    inner = _training_turn(charged)

    def thinking_turn(deps: Any, llm: Any, text: str, **kw: Any) -> Any:
        deadline = time.monotonic() + 20  # the model thinks until the page has gone
        while not all(t.cancelled.is_set() for t in state.turns.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return inner(deps, llm, text, **kw)

    state._run_turn = thinking_turn

    class GoneRequest:
        async def is_disconnected(self) -> bool:
            return True

    async def consume() -> list[dict[str, Any]]:
        ctl = state.new_turn("web-gone")
        return [json.loads(line) async for line in _turn_stream(state, ctl, "train a generator", GoneRequest())]

    events = asyncio.run(consume())
    assert charged == [] and ws.charges() == []
    (done,) = [e for e in events if e["type"] == "cancelled"]
    assert done["tool_started"] is False and "no privacy budget was spent" in done["text"]
    assert state.turns == {}


# ---- progress in words -----------------------------------------------------------------------------
def test_progress_is_in_words_with_a_time_estimate_and_no_losses() -> None:
    got: list[dict[str, Any]] = []
    p = WebProgress(got.append, min_interval=0)
    p.start("training DP-GAN", total=10)
    for _ in range(4):
        p.update(1, d_loss=0.696, g_loss=1.12, epsilon=0.3)
    p.finish()
    assert all("loss" not in json.dumps(e) for e in got)
    assert got[0]["label"] == "Learning the patterns of the real records under differential privacy"
    run = [e for e in got if e.get("state") == "run"]
    assert run[-1]["detail"] == "pass over the records 4 of 10"
    assert run[-1]["eta_s"] is not None and run[-1]["eta"]
    fin = [e for e in got if e.get("state") == "finish"][-1]
    assert fin["detail"] == "done" and fin["done"] == 10
    assert got[-1] == {"type": "status", "text": got[-1]["text"]} and "sampling the synthetic patients" in got[-1]["text"]
    from synthehr.agent.web.app import eta_words

    assert eta_words(None) == "" and eta_words(2) == "almost done"
    assert eta_words(42) == "about 40 s left" and eta_words(200) == "about 3 min left"


def test_a_stop_during_the_marginal_pre_training_counts_as_after_the_charge() -> None:
    from synthehr.agent.web.app import TurnCancelled, TurnControl

    ctl = TurnControl("s")
    ctl.cancel("stop")
    got: list[dict[str, Any]] = []
    p = WebProgress(got.append, min_interval=0, control=ctl)
    with pytest.raises(TurnCancelled):
        p.start("fitting the DP tables", total=1000)  # the DP tables were measured (and charged) before this
    assert ctl.training_started is True


# ---- the knowledge index at server start -----------------------------------------------------------
class FakeIndex:
    """Stands in for the Chroma index: build() reports progress like the real one."""

    def __init__(self) -> None:
        self.builds = 0
        self.progress: Any = None

    def build(self, progress: Any = None) -> Any:
        self.builds += 1
        progress.start("indexing knowledge", total=3)
        for _ in range(3):
            progress.update(1)
        progress.finish()
        return type("Stats", (), {"embedded": 3})()


def test_knowledge_index_is_built_at_start_not_inside_a_question(settings: Settings) -> None:
    opened: list[FakeIndex] = []

    def open_index(deps: Any) -> FakeIndex:
        opened.append(FakeIndex())
        return opened[-1]

    used: list[Any] = []

    def run_turn(deps: Any, llm: Any, text: str, **kw: Any) -> FakeResult:
        used.append(deps.index)  # a provenance question uses the index
        return FakeResult("ok", [], [])

    app = create_app(settings, run_turn=run_turn, llm=object(), index_factory=open_index, index_on_start=True)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:  # the context runs the server's start-up
        assert app.state.web.index_status.finished.wait(20)
        st = c.get("/api/status").json()["knowledge"]
        assert st["state"] == "ready" and st["done"] == 3 and st["total"] == 3
        c.post("/api/chat", json={"session": "web-k", "text": "which sources?"})
        c.post("/api/chat", json={"session": "web-k", "text": "and the guideline?"})
    assert len(opened) == 1 and opened[0].builds == 1  # built once, at start; the questions reuse it
    assert used == [opened[0], opened[0]]
    # without the setting nothing is built at start
    app2 = create_app(settings, run_turn=run_turn, llm=object(), index_factory=open_index, index_on_start=False)
    with TestClient(app2, base_url="http://127.0.0.1:7860") as c:
        assert c.get("/api/status").json()["knowledge"]["state"] == "idle"
    assert len(opened) == 1


def test_knowledge_index_failure_is_reported_not_raised(settings: Settings) -> None:
    def broken(deps: Any) -> Any:
        raise RuntimeError("no embedding model")

    app = create_app(settings, run_turn=fake_run_turn, llm=object(), index_factory=broken, index_on_start=True)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        assert app.state.web.index_status.finished.wait(20)
        st = c.get("/api/status").json()["knowledge"]
        assert st["state"] == "failed" and st["error"] == "RuntimeError"


# ---- the data card page and the sidebar labels -----------------------------------------------------
def test_data_card_is_an_escaped_html_page_with_workspace_relative_paths(settings: Settings, ws: Workspace) -> None:
    d = _make_dataset(ws)
    (d / "card.md").write_text(
        "# Data card: ds-test-1\n\nCondition **Type 2 <script>alert(1)</script> diabetes** <img src=x onerror=alert(2)>\n\n"
        "| column | label |\n|---|---|\n| hba1c | HbA1c |\n\n## Files\n"
        f"- {d / 'data.csv'}\n- {d / 'data.parquet'}\n\nSource: https://wwwn.cdc.gov/nchs/nhanes/ and "
        "[x](javascript:alert(3))\n", encoding="utf-8")
    c = _client(settings)
    r = c.get("/datasets/ds-test-1/card")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script" not in page and "<img" not in page and 'href="javascript' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<table>" in page and "<td>HbA1c</td>" in page
    assert "datasets/ds-test-1/data.csv" in page and str(ws.root) not in page
    assert '<a href="https://wwwn.cdc.gov/nchs/nhanes/"' in page
    assert 'href="/files/ds-test-1/data.csv" download' in page
    assert c.get("/datasets/nope/card").status_code == 404
    assert c.get("/datasets/..%2f..%2fx/card").status_code == 404
    (ds,) = c.get("/api/datasets").json()["datasets"]
    assert ds["links"]["card_html"] == "/datasets/ds-test-1/card"


def test_sidebar_labels_each_dataset_with_its_filters_and_shares(settings: Settings, ws: Workspace) -> None:
    from synthehr.agent.web.app import dataset_summary

    _make_dataset(ws, "ds-all")
    _make_dataset(ws, "ds-old")
    row = ws.get("datasets", "id", "ds-old")
    card = json.loads(row["card_json"])
    card["columns"].append({"name": "age_years", "label": "Age"})
    card["cohort"] = {"fixed": {}, "filters": ["age_years >= 65"], "proportions": {"sex=female": 0.4}}
    with ws.transaction() as conn:
        conn.execute("UPDATE datasets SET card_json = ? WHERE id = ?", (json.dumps(card), "ds-old"))
    got = {d["id"]: d for d in _client(settings).get("/api/datasets").json()["datasets"]}
    assert got["ds-old"]["filters"] == ["Age ≥ 65"] and got["ds-old"]["shares"] == ["sex = female: 40 %"]
    assert got["ds-all"]["filters"] == [] and got["ds-all"]["shares"] == []
    assert dataset_summary(ws.get("datasets", "id", "ds-old"), ws.root)["filters"] == ["Age ≥ 65"]


# ---- plots: alt text with the figure's numbers -----------------------------------------------------
def test_plot_alt_text_states_the_numbers_the_figure_shows() -> None:
    import pandas as pd

    from synthehr.agent.web.app import plot_alt
    from synthehr.tools.engines import stats as se

    values = pd.Series([5.5, 6.0, 6.5, 7.0, 7.5, None])
    data = {"dataset_id": "ds-1", "columns": {
        "hba1c_pct": {**se.numeric_summary(values), "label": "HbA1c", "unit": "%", "type": "continuous"},
        "sex": {**se.categorical_summary(pd.Series(["female", "male", "female", "female"])), "label": "Sex",
                "unit": None, "type": "categorical"}}}
    alt = plot_alt("/ws/datasets/ds-1/plots/hist_hba1c_pct.png", data)
    assert alt.startswith("Histogram of HbA1c (%) in 5 synthetic patients: mean 6.5")
    assert "median 6.5 (IQR 6 to 7)" in alt and "range 5.5 to 7.5" in alt and "1 missing" in alt and "ds-1" in alt
    assert plot_alt("x/bar_sex.png", data).startswith("Bar chart of Sex in 4 synthetic patients: female 75.0 %, male 25.0 %")
    assert plot_alt("x/hist_bmi.png", None) == "Histogram of bmi."


def test_streamed_answer_chunks_are_forwarded(settings: Settings) -> None:
    def streaming(deps: Any, llm: Any, text: str, *, on_event: Any = None, **kw: Any) -> FakeResult:
        for chunk in ("The mean ", "HbA1c is ", "6.8 %."):
            on_event(FakeEvent("answer_delta", text=chunk))
        return FakeResult("The mean HbA1c is 6.8 %.", [], [])

    events = _events(_client(settings, run_turn=streaming).post("/api/chat", json={"session": "web-d", "text": "mean?"}))
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "The mean HbA1c is 6.8 %."
    assert [e for e in events if e["type"] == "answer"][0]["text"] == "The mean HbA1c is 6.8 %."


def test_provenance_sources_name_the_data_sets_own_source(ws: Workspace) -> None:
    """Retrieval may return guideline passages only; the source the data set was trained on is still listed."""
    from synthehr.agent.web.app import turn_artifacts

    _make_dataset(ws)
    steps = [{"tool": "explain_provenance", "args": {"dataset": "last"}, "observation": "[1] ADA ...", "files": [],
              "data": {"dataset_id": "ds-test-1", "citations": [
                  {"title": "ADA Standards of Care", "section": "Diagnosis", "url": "https://diabetesjournals.org/care"}]}}]
    cites = turn_artifacts(ws, steps, "", [])["citations"]
    assert cites[0] == {"url": "https://diabetesjournals.org/care", "title": "ADA Standards of Care — Diagnosis"}
    assert cites[1]["url"] == "https://wwwn.cdc.gov/nchs/nhanes/" and cites[1]["title"].startswith("NHANES 2017-2018")
    assert len(cites) == 2
