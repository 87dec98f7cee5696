"""Chat templates: turn chat messages into the one prompt string a completion model reads.

Formats:
- ``llama-2``: Meta's LLaMA-2-chat format, exactly as the model was trained on it::

      <s>[INST] <<SYS>>
      {system}
      <</SYS>>

      {user 1} [/INST] {assistant 1} </s><s>[INST] {user 2} [/INST]

- ``chatml``: ``<|im_start|>role\\ncontent<|im_end|>\\n`` ... ``<|im_start|>assistant\\n`` (SmolLM2, Qwen).
- ``template``: the model's own Jinja chat template (from the tokenizer or the GGUF metadata).
- ``auto``: the model's own chat template when it has one (rendered by our exact ``llama-2`` renderer
  when that template is LLaMA-2's [INST] <<SYS>> one), else ``llama-2`` for a model named LLaMA-2
  or of the llama architecture, else ``chatml``. A file name never overrides the model's template.

A final ``assistant`` message is treated as the start of the reply the model should continue (the
ReAct scratchpad: "Thought: ...\\nAction: ...\\nObservation: ...\\n"), so it is rendered open —
without its end-of-turn marker and without a new generation prompt.

Plain Python (jinja2 only when a template is rendered); no model libraries are imported here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

Message = dict[str, str]

CHAT_FORMATS = ("auto", "llama-2", "chatml", "template")

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def _check(messages: Sequence[Message]) -> list[Message]:
    if not messages:
        raise ValueError("no messages to format")
    out = []
    for m in messages:
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message role must be system, user or assistant (got {role!r})")
        out.append({"role": role, "content": str(m.get("content") or "")})
    return out


def llama2_prompt(messages: Sequence[Message], bos: str = "<s>", eos: str = "</s>") -> str:
    """Render messages in LLaMA-2-chat's [INST] <<SYS>> format (the same string as Meta's reference
    code and the Hugging Face chat template of meta-llama/Llama-2-*-chat-hf).

    System messages are merged into the first user turn. A trailing assistant message is left open
    for the model to continue."""
    msgs = _check(messages)
    system = "\n\n".join(m["content"].strip() for m in msgs if m["role"] == "system")
    turns = [m for m in msgs if m["role"] != "system"]
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": ""})
    out: list[str] = []
    i = 0
    first = True
    while i < len(turns):
        user = turns[i]
        if user["role"] != "user":
            raise ValueError("LLaMA-2 chat messages must alternate user / assistant")
        content = user["content"].strip()
        if first and system:
            content = f"{B_SYS}{system}{E_SYS}{content}"
        first = False
        out.append(f"{bos}{B_INST} {content} {E_INST}")
        if i + 1 < len(turns):
            reply = turns[i + 1]
            if reply["role"] != "assistant":
                raise ValueError("LLaMA-2 chat messages must alternate user / assistant")
            if i + 2 < len(turns):
                out.append(f" {reply['content'].strip()} {eos}")
            else:  # the open reply the model continues
                out.append(f" {reply['content'].lstrip()}")
        i += 2
    return "".join(out)


def chatml_prompt(messages: Sequence[Message]) -> str:
    """Render messages in ChatML (SmolLM2, Qwen). A trailing assistant message is left open."""
    msgs = _check(messages)
    parts: list[str] = []
    for k, m in enumerate(msgs):
        last_open = k == len(msgs) - 1 and m["role"] == "assistant"
        parts.append(f"<|im_start|>{m['role']}\n{m['content']}" + ("" if last_open else "<|im_end|>\n"))
    if msgs[-1]["role"] != "assistant":
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def render_template(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    extra: dict[str, Any] | None = None,
) -> str:
    """Render a Hugging Face-style Jinja chat template (as stored in tokenizer_config.json or a
    GGUF's ``tokenizer.chat_template``). A trailing assistant message is left open: the template is
    rendered for the messages before it with a generation prompt, then its text is appended."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    msgs = _check(messages)
    prefix = ""
    if msgs[-1]["role"] == "assistant" and len(msgs) > 1:
        prefix = msgs[-1]["content"]
        msgs = msgs[:-1]

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.filters.setdefault("tojson", lambda v, indent=None: __import__("json").dumps(v, indent=indent, ensure_ascii=False))
    text = env.from_string(template).render(
        messages=msgs, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=True, **(extra or {})
    )
    return text + prefix


_LLAMA2_NAME = re.compile(r"llama[-_ ]?2", re.IGNORECASE)


def is_llama2_chat(name: str | None, model_type: str | None = None, template: str | None = None) -> bool:
    """True for LLaMA-2 chat models: a llama model whose name says llama-2 (e.g.
    meta-llama/Llama-2-7b-chat-hf, llama-2-7b-chat.Q4_K_M.gguf), or whose own template is the
    [INST] <<SYS>> one."""
    if template and "<<SYS>>" in template and "[INST]" in template:
        return True
    if model_type not in (None, "llama"):
        return False
    return bool(name and _LLAMA2_NAME.search(name))


def resolve_format(
    setting: str,
    *,
    name: str | None = None,
    model_type: str | None = None,
    template: str | None = None,
) -> str:
    """Choose the concrete format ('llama-2', 'chatml' or 'template') for a model.

    ``auto``: a model with its own template gets 'template' ('llama-2' when that template is LLaMA-2's,
    the same string); a model without one gets 'llama-2' when its name says LLaMA-2 or it is a llama,
    else 'chatml'. The model's template always wins over its file name."""
    if setting not in CHAT_FORMATS:
        raise ValueError(f"unknown chat format {setting!r} (valid: {', '.join(CHAT_FORMATS)})")
    if setting == "template" and not template:
        raise ValueError("chat_format is 'template' but the model has no chat template (use llama-2 or chatml)")
    if setting != "auto":
        return setting
    if template:  # the model's own template wins over any name
        return "llama-2" if "<<SYS>>" in template and "[INST]" in template else "template"
    if is_llama2_chat(name, model_type, None):
        return "llama-2"
    return "llama-2" if model_type == "llama" else "chatml"


# Turn markers of each format: generation stops at them (a model that runs past its turn writes the next
# "[INST] ..." or "<|im_start|>user ..." itself). Markers a template uses are found in its text.
TURN_MARKERS: dict[str, tuple[str, ...]] = {
    "llama-2": ("[INST]", "[/INST]", "</s>", "<<SYS>>"),
    "chatml": ("<|im_end|>", "<|im_start|>"),
}
_TEMPLATE_MARKERS = ("<|im_end|>", "<|im_start|>", "[INST]", "[/INST]", "<|eot_id|>", "<|start_header_id|>",
                     "<end_of_turn>", "<start_of_turn>", "<|end|>", "<|user|>", "<|assistant|>", "<|endoftext|>")


def turn_markers(fmt: str, template: str | None = None, eos_token: str | None = None) -> list[str]:
    """The stop strings that end a reply in format `fmt` (its turn markers and end-of-sequence text)."""
    if fmt == "template":
        out = [m for m in _TEMPLATE_MARKERS if template and m in template]
    else:
        out = list(TURN_MARKERS.get(fmt, ()))
    if eos_token and eos_token not in out and len(eos_token) > 1:
        out.append(eos_token)
    return out


def merge_stops(stop: Sequence[str] | None, extra: Sequence[str]) -> list[str]:
    """`stop` followed by the `extra` strings it lacks (order kept, no duplicates)."""
    return list(dict.fromkeys([*(stop or ()), *extra]))


def render(
    messages: Sequence[Message],
    fmt: str,
    *,
    template: str | None = None,
    bos_token: str = "<s>",
    eos_token: str = "</s>",
) -> str:
    """Render messages in a concrete format returned by resolve_format."""
    if fmt == "llama-2":
        return llama2_prompt(messages, bos=bos_token or "<s>", eos=eos_token or "</s>")
    if fmt == "chatml":
        return chatml_prompt(messages)
    if fmt == "template":
        if not template:
            raise ValueError("no chat template to render")
        return render_template(template, messages, bos_token=bos_token, eos_token=eos_token)
    raise ValueError(f"unknown chat format {fmt!r}")
