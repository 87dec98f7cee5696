"""Small helpers shared by the backends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from synthehr.configs.settings import ConfigError


class GrammarError(ValueError):
    """The GBNF grammar text does not parse (a bug in the caller's grammar, not a user error)."""


@dataclass
class Usage:
    """What the last generate() call cost (for logs and benchmarks)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    # Where the backend reports them (llama.cpp): tokens evaluated for the prompt (after prefix reuse)
    # and the time spent on the prompt and on decoding.
    prompt_eval_tokens: int | None = None
    prompt_eval_s: float | None = None
    decode_s: float | None = None
    started: float = field(default_factory=time.perf_counter, repr=False)

    def done(self, prompt_tokens: int, completion_tokens: int) -> "Usage":
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.seconds = time.perf_counter() - self.started
        return self

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per second of the whole call (prompt processing included)."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.decode_s if self.decode_s else None


class LLMUnavailable(ConfigError):
    """The configured LLM backend cannot be used; the message says why and how to fix it
    (install a package, point llm.model at a file, start the server)."""
