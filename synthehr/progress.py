"""Progress of long work (training, indexing): the protocol, a tqdm bar, and a silent reporter."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    """Progress of long work (training, indexing). Implementations: tqdm (default), Rich, the web page."""

    def start(self, task: str, total: int | None = None) -> None: ...

    def update(self, advance: int = 1, **info: Any) -> None: ...

    def finish(self) -> None: ...


class TqdmProgress:
    """A tqdm bar on stderr."""

    def __init__(self, disable: bool = False):
        self._bar: Any = None
        self._disable = disable

    def start(self, task: str, total: int | None = None) -> None:
        from tqdm.auto import tqdm

        self.finish()
        self._bar = tqdm(total=total, desc=task, file=sys.stderr, disable=self._disable, leave=False)

    def update(self, advance: int = 1, **info: Any) -> None:
        if self._bar is None:
            return
        if info:
            self._bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in info.items()}, refresh=False)
        self._bar.update(advance)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class NullProgress:
    def start(self, task: str, total: int | None = None) -> None:
        pass

    def update(self, advance: int = 1, **info: Any) -> None:
        pass

    def finish(self) -> None:
        pass
