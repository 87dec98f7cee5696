"""The one interface every LLM backend implements, and the strict scripted fake used in tests.

A backend takes chat messages ({"role": "system"|"user"|"assistant", "content": str}), applies its
model's own chat template (LLaMA-2: [INST] <<SYS>>), and returns the generated text. `grammar` is a
GBNF grammar constraining the output where the backend supports it (llama.cpp natively,
transformers through xgrammar, vLLM through guided decoding); `stop` strings end generation and
are not included in the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]


@runtime_checkable
class LLMBackend(Protocol):
    name: str
    model_id: str
    supports_grammar: bool

    def generate(
        self,
        messages: list[Message],
        *,
        stop: list[str] | None = None,
        max_tokens: int = 256,
        grammar: str | None = None,
        temperature: float = 0.0,
    ) -> str: ...


class ScriptExhausted(AssertionError):
    """The scripted fake was asked for more replies than its script holds (a test bug or an agent loop bug)."""


def cut_at_stop(text: str, stop: Iterable[str] | None) -> str:
    """Cut `text` at the earliest stop string (backends that ignore `stop` are cut here)."""
    cut = len(text)
    for s in stop or ():
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


@dataclass
class ScriptedLLM:
    """A strict fake LLM: replies from its script in order, fails when the script runs out,
    and records every call (messages, stop, grammar) for assertions."""

    script: list[str]
    name: str = "scripted"
    model_id: str = "scripted-fake"
    supports_grammar: bool = True
    calls: list[dict[str, Any]] = field(default_factory=list)

    def generate(
        self,
        messages: list[Message],
        *,
        stop: list[str] | None = None,
        max_tokens: int = 256,
        grammar: str | None = None,
        temperature: float = 0.0,
    ) -> str:
        self.calls.append({"messages": [dict(m) for m in messages], "stop": list(stop or []), "grammar": grammar})
        if len(self.calls) > len(self.script):
            raise ScriptExhausted(
                f"scripted LLM asked for reply {len(self.calls)} but its script has {len(self.script)}"
            )
        return cut_at_stop(self.script[len(self.calls) - 1], stop)

    @property
    def prompts(self) -> list[str]:
        """Every call's messages flattened to text (for asserting on what the model was shown)."""
        return ["\n".join(m["content"] for m in c["messages"]) for c in self.calls]

    @property
    def exhausted(self) -> bool:
        return len(self.calls) >= len(self.script)
