"""The page renders any tool's result from what the result declares (files, plots, sources): a tool added in one
module (tests/_new_tool.py) shows its files, its chart and its source through the real loop, with no web code."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from synthehr.agent.llm.base import ScriptedLLM
from synthehr.agent.loop import run_turn
from synthehr.tools.registry import default_registry
from tests import _new_tool

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from synthehr.agent.web.app import create_app  # noqa: E402


def test_a_new_tools_files_plots_and_sources_reach_the_page(settings: Any) -> None:
    registry = default_registry()
    registry.add(_new_tool.SPEC)  # the one registry line
    llm = ScriptedLLM(['Thought: convert and chart.\nAction: hba1c_units\nAction Input: {"percent": 7.5, "chart": true}',
                       "Thought: done.\nFinal Answer: An HbA1c of 7.5% is 58 mmol/mol."], name="embedded")
    app = create_app(settings, llm=llm, registry=registry, run_turn=functools.partial(run_turn, router=None),
                     index_on_start=False)
    client = TestClient(app, base_url="http://127.0.0.1:7860")
    r = client.post("/api/chat", json={"session": "web-new", "text": "convert an HbA1c of 7.5 % to mmol/mol, with a chart"})
    events = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert llm.exhausted
    (obs,) = [e for e in events if e["type"] == "step" and e["kind"] == "observation"]
    assert obs["tool"] == "hba1c_units" and [f.rsplit("/", 1)[-1] for f in obs["files"]] == ["hba1c-7.5.csv",
                                                                                            "hba1c-7.5.svg"]
    (answer,) = [e for e in events if e["type"] == "answer"]
    assert [p["url"] for p in answer["plots"]] == ["/files/hba1c-units/hba1c-7.5.svg"]
    assert answer["downloads"] == [{"url": "/files/hba1c-units/hba1c-7.5.csv", "name": "hba1c-7.5.csv",
                                    "dataset": "hba1c-units"}]
    assert {"url": "https://ngsp.org/ifccngsp.asp", "title": "NGSP: IFCC-NGSP master equation"} in answer["citations"]
    got = client.get(answer["downloads"][0]["url"])
    assert got.status_code == 200 and got.text.endswith("7.5,58\n")  # the file is served


def test_a_declared_plot_is_a_plot_whatever_its_suffix(settings: Any) -> None:
    from synthehr.agent.web.app import turn_artifacts
    from synthehr.tools.store.workspace import Workspace

    ws = Workspace(settings.workspace.path)
    d = ws.datasets_dir / "ds-x"
    d.mkdir(parents=True)
    (d / "roc.jpg").write_bytes(b"\xff\xd8\xff fake")
    (d / "photo.jpg").write_bytes(b"\xff\xd8\xff fake")
    steps = [{"tool": "any_tool", "files": [str(d / "roc.jpg"), str(d / "photo.jpg")], "data": {},
              "result": {"plots": [str(d / "roc.jpg")], "sources": [{"title": "A guideline", "section": "2", "url": ""}]}}]
    arts = turn_artifacts(ws, steps, "", [])
    assert [p["url"] for p in arts["plots"]] == ["/files/ds-x/roc.jpg"]  # declared: a plot
    assert [f["name"] for f in arts["downloads"]] == ["photo.jpg"]  # not declared: a download
    assert arts["citations"] == [{"url": None, "title": "A guideline — 2"}]
