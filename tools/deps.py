"""What tools receive: settings, workspace, catalog, session and progress. No globals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthehr.tools.base import NullProgress, Progress, SessionState
from synthehr.tools.store.catalog import Catalog
from synthehr.configs.settings import Settings, load_settings
from synthehr.tools.store.workspace import Workspace


@dataclass
class Deps:
    settings: Settings
    workspace: Workspace
    catalog: Catalog
    session: SessionState = field(default_factory=SessionState)
    progress: Progress = field(default_factory=NullProgress)
    # Builds the knowledge index (Chroma) on first use; tests pass their own.
    index_factory: Callable[["Deps"], Any] | None = None
    _index: Any = field(default=None, init=False, repr=False)

    @property
    def index(self) -> Any:
        """The knowledge index, built lazily on first use (importing chromadb only then)."""
        if self._index is None:
            factory = self.index_factory
            if factory is None:
                from synthehr.tools.engines.knowledge_index import open_index

                factory = open_index
            self._index = factory(self)
        return self._index

    def save_session(self) -> None:
        self.workspace.save_session(self.session.name, self.session.to_dict(), self.workspace.load_session(self.session.name)[1])


def build_deps(
    config_file: Path | str | None = None,
    session: str = "default",
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> Deps:
    """Open the configured workspace and catalog; load the named session's state."""
    settings = settings or load_settings(config_file)
    ws = Workspace(settings.workspace.path)
    catalog = Catalog(ws)
    state, _ = ws.load_session(session)
    return Deps(
        settings=settings,
        workspace=ws,
        catalog=catalog,
        session=SessionState.from_dict(session, state),
        progress=progress or NullProgress(),
    )
