"""What every command shares: the global options and how a command builds the tools' dependencies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer


class Ctx:
    """Options shared by every command (set by the top-level callback)."""

    config: Optional[Path] = None
    debug: bool = False


CTX = Ctx()


def deps(session: str = "default", progress: Any = None) -> Any:
    """Build the tools' dependencies from the configuration (used by every command)."""
    from synthehr.tools.deps import build_deps

    return build_deps(CTX.config, session=session, progress=progress)


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))
