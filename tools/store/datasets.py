"""Finding generated data sets: by id, or "last" (this session's, then the workspace's newest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthehr.errors import ToolInputError

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.deps import Deps


def resolve_dataset(deps: Deps, ref: str | None) -> dict[str, Any]:
    """The datasets-table row for `ref` (an id, or None/"last"/"latest"/"this"). Raises ToolInputError listing recent ids."""
    key = (ref or "last").strip()
    if key.lower() in {"last", "latest", "this", "current", "previous"}:
        row = None
        if deps.session.last_dataset:
            row = deps.workspace.get("datasets", "id", deps.session.last_dataset)
        row = row or deps.workspace.latest_dataset(deps.session.name)
        if row is None:
            raise ToolInputError("no data set has been generated yet in this workspace; generate a cohort first")
        return row
    row = deps.workspace.get("datasets", "id", key)
    if row is None:
        recent = [r["id"] for r in deps.workspace.query("SELECT id FROM datasets ORDER BY created_at DESC LIMIT 5")]
        raise ToolInputError(
            f"unknown data set '{key}'; use 'last' or one of: {', '.join(recent) if recent else '(none generated yet)'}"
        )
    return row


def dataset_card(row: dict[str, Any]) -> dict[str, Any]:
    path = Path(row["dir"]) / "card.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return json.loads(row.get("card_json") or "{}")
