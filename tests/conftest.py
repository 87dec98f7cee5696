"""Shared fixtures: an isolated environment (no SYNTHEHR_* leaking in, offline hubs) and a temp workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthehr.configs.settings import Settings, load_settings
from synthehr.tools.deps import Deps, build_deps


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("SYNTHEHR_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture
def workspace_dir(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def settings(workspace_dir: Path) -> Settings:
    return load_settings(env={"SYNTHEHR_HOME": str(workspace_dir)})


@pytest.fixture
def deps(settings: Settings) -> Deps:
    return build_deps(settings=settings)
