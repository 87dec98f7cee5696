"""The one interface every LLM backend implements, and the strict scripted fake used in tests.

A backend takes chat messages ({"role": "system"|"user"|"assistant", "content": str}), applies its
model's own chat template (LLaMA-2: [INST] <<SYS>>), and returns the generated text. `grammar` is a
GBNF grammar constraining the output where the backend supports it (llama.cpp natively,
transformers through xgrammar, vLLM through guided decoding); `stop` strings end generation and
are not included in the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def cut_stream(chunks: Iterable[str], stop: Iterable[str] | None) -> Iterator[str]:
    """Pass streamed text on as it comes, ending at the first stop string (not included): text that could be
    the start of a stop string is held back until the next chunk settles it. The concatenation of what it
    yields equals cut_at_stop of the concatenated input."""
    stops = [s for s in (stop or ()) if s]
    hold = max((len(s) for s in stops), default=1) - 1
    buf = ""
    for chunk in chunks:
        if not chunk:
            continue
        buf += chunk
        cut = cut_at_stop(buf, stops)
        if cut != buf:
            if cut:
                yield cut
            return
        # Keep the tail that may begin a stop string; pass the rest on.
        keep = 0
        for s in stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        keep = min(keep, hold)
        if len(buf) > keep:
            yield buf[: len(buf) - keep]
            buf = buf[len(buf) - keep:]
    if buf:
        yield buf


def word_pieces(text: str) -> list[str]:
    """`text` as the pieces a streaming backend sends (a word with the space after it); they join to `text`."""
    import re

    return re.findall(r"\s*\S+\s*?(?=\s|$)|\s+$", text) if text.strip() else ([text] if text else [])


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

    def stream(
        self,
        messages: list[Message],
        *,
        stop: list[str] | None = None,
        max_tokens: int = 256,
        grammar: str | None = None,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        """The same reply as `generate` (the same strict script, the same record), sent in word pieces."""
        text = self.generate(messages, stop=stop, max_tokens=max_tokens, grammar=grammar, temperature=temperature)
        yield from word_pieces(text)

    @property
    def prompts(self) -> list[str]:
        """Every call's messages flattened to text (for asserting on what the model was shown)."""
        return ["\n".join(m["content"] for m in c["messages"]) for c in self.calls]

    @property
    def exhausted(self) -> bool:
        return len(self.calls) >= len(self.script)
