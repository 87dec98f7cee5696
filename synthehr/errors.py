"""The one error root. Every failure a user (or the model) can fix subclasses `UserError`; a damaged
workspace raises `WorkspaceError`. Anything else is a bug and keeps its traceback.

Messages never contain a row of real data.
"""

from __future__ import annotations


class SynthehrError(Exception):
    """Root of every error synthehr raises on purpose."""


class UserError(SynthehrError, ValueError):
    """The caller can fix this: the message says what was wrong and, where there is a choice, lists the valid ones."""


class ToolInputError(UserError):
    """A tool's arguments are wrong. The agent returns the message to the model as a corrective
    observation; the CLI prints it as one line."""


class WorkspaceError(SynthehrError):
    """The workspace (database, model or data-set files) is damaged or inconsistent; the message names
    what is wrong and how to repair it (`synthehr doctor`)."""
