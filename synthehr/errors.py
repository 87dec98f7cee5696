"""The one error root, and the one mapping from an exception to the line a user sees.

Every failure a user (or the model) can fix subclasses `UserError`; a damaged workspace raises
`WorkspaceError`. Anything else is a bug and keeps its traceback. `user_message(exc)` is the single
place that decides whether an exception is the user's to fix (a one-line message) or a bug (None);
the CLI, the web server and the agent all call it.

Messages never contain a row of real data.
"""

from __future__ import annotations

import sqlite3
import sys


class SynthehrError(Exception):
    """Root of every error synthehr raises on purpose."""


class UserError(SynthehrError, ValueError):
    """The caller can fix this: the message says what was wrong and, where there is a choice, lists the valid ones."""


class ToolInputError(UserError):
    """A tool's arguments are wrong. The agent returns the message to the model as a corrective
    observation; the CLI prints it as one line."""


class EmptyRequestError(UserError):
    """An empty or whitespace-only request: refused before any model runs."""


class WorkspaceError(SynthehrError):
    """The workspace (database, model or data-set files) is damaged or inconsistent; the message names
    what is wrong and how to repair it (`synthehr doctor`)."""


class DamagedArtifactError(WorkspaceError):
    """A saved model or data set fails its checks (missing file, hash mismatch). It is reported, never
    silently replaced: the message names it, what is wrong and how to remove it."""


def require_request(text: object) -> str:
    """The request stripped; an empty or whitespace-only one raises EmptyRequestError before any model runs."""
    stripped = text.strip() if isinstance(text, str) else ""
    if not stripped:
        raise EmptyRequestError('the request is empty; say what you want, e.g. "generate 500 type 2 diabetes '
                                'patients based on the US population"')
    return stripped


# sqlite3.DatabaseError messages that mean the file itself is damaged (not a query bug).
_CORRUPT_MARKERS = ("malformed", "not a database", "disk image", "file is encrypted", "database corrupt",
                    "unable to open database", "disk i/o error", "readonly database")


def is_database_damage(exc: BaseException) -> bool:
    """True for an SQLite error that means a damaged or unreadable database file (not a programming error)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    if type(exc) is sqlite3.DatabaseError:
        return True
    msg = str(exc).lower()
    return any(m in msg for m in _CORRUPT_MARKERS)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _click_message(exc: BaseException) -> str | None:
    """The message of a click usage error, from whichever click copy raised it (click or typer._click)."""
    for mod_name in ("click.exceptions", "typer._click.exceptions"):
        mod = sys.modules.get(mod_name)
        base = getattr(mod, "ClickException", None) if mod is not None else None
        if base is not None and isinstance(exc, base):
            try:
                msg = exc.format_message()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - a message must never fail
                msg = str(exc)
            cmd = None
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                cmd = getattr(ctx, "command_path", None)
            hint = f" (see `{cmd} --help`)" if cmd else ""
            return _one_line(f"{msg}{hint}")
    return None


def _pydantic_message(exc: BaseException) -> str | None:
    mod = sys.modules.get("pydantic")
    if mod is None or not isinstance(exc, mod.ValidationError):
        return None
    errs = exc.errors()  # type: ignore[attr-defined]
    if not errs:
        return _one_line(str(exc))
    err = errs[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p is not None)
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
    msg = str(err.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return _one_line(f"{where + ': ' if where else ''}{msg}{shown}{more}")


def user_message(exc: BaseException) -> str | None:
    """The one line to show for a failure the user can fix, or None when `exc` is a bug.

    Covers synthehr's own errors, pydantic validation errors, click/typer usage errors (both click
    copies), files that are not UTF-8 text, a damaged SQLite database and missing or unreadable files.
    """
    if isinstance(exc, SynthehrError):
        return _one_line(str(exc) or type(exc).__name__)
    msg = _click_message(exc)
    if msg is not None:
        return msg
    msg = _pydantic_message(exc)
    if msg is not None:
        return msg
    if isinstance(exc, UnicodeDecodeError):
        return _one_line(f"a file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
                         "save it as UTF-8" if isinstance(exc.object, (bytes, bytearray)) and exc.start < len(exc.object)
                         else "a file is not UTF-8 text; save it as UTF-8")
    if is_database_damage(exc):
        return _one_line(f"the workspace database is damaged or unreadable ({exc}); run `synthehr doctor`, "
                         "or restore synthehr.db from a backup")
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        what = {FileNotFoundError: "file not found", IsADirectoryError: "is a folder, not a file",
                NotADirectoryError: "not a folder", PermissionError: "permission denied"}.get(type(exc), exc.strerror)
        return _one_line(f"{what}: {exc.filename}" if exc.filename else f"{what} ({exc.strerror})")
    return None


__all__ = ["SynthehrError", "UserError", "ToolInputError", "EmptyRequestError", "WorkspaceError",
           "DamagedArtifactError", "is_database_damage", "require_request", "user_message"]
