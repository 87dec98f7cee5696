"""Fast tests of the web app (agent/web/app.py): path safety, the access token, binding, and a streamed turn.

The agent is replaced by a small stand-in with run_turn's interface, so these run in a second or two;
tests/test_web_browser.py drives the real server, agent and tools in a browser.
"""

from __future__ import annotations

import json
import os
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
    return FakeResult(answer, [{"tool": "generate_cohort", "args": args, "observation": obs, "files": files}], files)


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
    assert answer["plots"] == [{"url": "/files/ds-test-1/plots/hba1c.png", "name": "hba1c"}]
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
    assert ds["plots"] == [{"url": "/files/ds-test-1/plots/hba1c.png", "name": "hba1c"}]
    sessions = c.get("/api/sessions").json()["sessions"]
    assert sessions[0]["name"] == "web-a" and sessions[0]["turns"] == 1
    assert sessions[0]["title"] == "generate 2 diabetes patients"
    hist = c.get("/api/sessions/web-a").json()
    assert hist["turns"][0]["answer"] == "ok"
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
    assert arts["plots"] == [{"url": "/files/ds-test-1/plots/hba1c.png", "name": "hba1c"}]
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
