"""llama.cpp backend (llama-cpp-python): a GGUF file, e.g. llama-2-7b-chat.Q4_K_M.gguf or the
packaged SmolLM2. The prompt is rendered here (LLaMA-2 [INST] <<SYS>> for LLaMA-2 chat models, else
the GGUF's own chat template, else ChatML), tokenized once and completed with llama.cpp's native
GBNF grammar sampler. llama.cpp reuses the KV cache of a shared prompt prefix, so each ReAct step
only pays for the new observation.

Prompt cache: the agent's prompt starts with the same ~1,700 tokens every time (system prompt, tool
list, few-shot examples). With a cache directory, the first call of a process restores the KV state
of the last prompt from disk (one file per model, ~25 KB per token for SmolLM2) and evaluates only
what differs, so `synthehr ask` does not pay the long prefix on every start."""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from synthehr.agent.llm import chat_format as cf
from synthehr.agent.llm.common import GrammarError, Usage
from synthehr.agent.llm.base import Message, cut_at_stop, cut_stream

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.configs.settings import LLMSettings

INSTALL_HINT = 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install "llama-cpp-python>=0.3.7"'


def _unavailable(msg: str) -> Exception:
    from synthehr.agent.llm.common import LLMUnavailable

    return LLMUnavailable(msg)


class LlamaCppBackend:
    name = "llamacpp"
    supports_grammar = True

    def __init__(self, llm: Any, *, model_id: str, fmt: str, template: str | None, bos: str, eos: str,
                 max_tokens: int = 256, temperature: float = 0.0, cache_file: Path | None = None) -> None:
        self.llm = llm
        self.model_id = model_id
        self.chat_format = fmt
        self.template = template
        self.bos_token, self.eos_token = bos, eos
        self.default_max_tokens = max_tokens
        self.default_temperature = temperature
        self.last_usage = Usage()
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.cache_file = cache_file
        self._cache_state = "untried"  # untried -> restored (n tokens) | missed -> saved
        self.stop_markers = cf.turn_markers(fmt, template, eos)
        self.context_window = int(llm.n_ctx()) if hasattr(llm, "n_ctx") else 4096

    @classmethod
    def from_settings(cls, settings: "LLMSettings", path: Path | None = None) -> "LlamaCppBackend":
        return cls.load(
            path if path is not None else Path(str(settings.model)),
            n_ctx=settings.n_ctx,
            n_threads=settings.n_threads,
            n_gpu_layers=settings.n_gpu_layers,
            chat_format=settings.chat_format,
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            prompt_cache_dir=prompt_cache_dir(settings),
        )

    @classmethod
    def load(cls, path: Path | str, *, n_ctx: int = 4096, n_threads: int = 0, n_gpu_layers: int = 0,
             chat_format: str = "auto", max_tokens: int = 256, temperature: float = 0.0,
             seed: int = 1234, prompt_cache_dir: Path | None = None) -> "LlamaCppBackend":
        path = Path(path).expanduser()
        if not path.is_file():
            raise _unavailable(f"GGUF model file {path} does not exist (set llm.model to a .gguf file)")
        try:
            from llama_cpp import Llama
        except ImportError:
            raise _unavailable(f"the llamacpp backend needs llama-cpp-python: {INSTALL_HINT}") from None
        try:
            llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or None, n_gpu_layers=n_gpu_layers,
                        seed=seed, flash_attn=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise _unavailable(f"llama.cpp cannot load {path}: {exc}") from None
        meta = dict(getattr(llm, "metadata", {}) or {})
        template = meta.get("tokenizer.chat_template") or None
        bos = _token_text(llm, llm.token_bos())
        eos = _token_text(llm, llm.token_eos())
        name = f"{path.name} {meta.get('general.name', '')} {meta.get('general.basename', '')}"
        try:
            fmt = cf.resolve_format(chat_format, name=name, model_type=meta.get("general.architecture"), template=template)
        except ValueError as exc:
            raise _unavailable(str(exc)) from None
        model_id = meta.get("general.name") or path.name
        cache_file = None
        if prompt_cache_dir is not None:
            st = path.stat()
            key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{n_ctx}|{n_gpu_layers}".encode()).hexdigest()[:16]
            cache_file = Path(prompt_cache_dir) / f"{path.stem}-{key}.kvstate"
        return cls(llm, model_id=str(model_id), fmt=fmt, template=template, bos=bos or "<s>", eos=eos or "</s>",
                   max_tokens=max_tokens, temperature=temperature, cache_file=cache_file)

    def render(self, messages: list[Message]) -> str:
        return cf.render(messages, self.chat_format, template=self.template, bos_token=self.bos_token,
                         eos_token=self.eos_token)

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens of `messages` as this backend renders them (for the prompt budget)."""
        with self._lock:
            return len(self.llm.tokenize(self.render(messages).encode("utf-8"), add_bos=False, special=True))

    def _prompt_tokens(self, prompt: str) -> tuple[list[int], int]:
        """The prompt's tokens and the room left for the reply (call with the lock held); restores the
        prompt cache on first use."""
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        room = self.llm.n_ctx() - len(tokens)
        if room < 16:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit the context window of {self.llm.n_ctx()}"
                             " (raise llm.n_ctx or shorten the conversation)")
        if self._cache_state == "untried":
            self._restore(tokens)
        return tokens, room

    def generate(self, messages: list[Message], *, stop: list[str] | None = None, max_tokens: int | None = None,
                 grammar: str | None = None, temperature: float | None = None) -> str:
        max_tokens = max_tokens or self.default_max_tokens
        temperature = self.default_temperature if temperature is None else temperature
        prompt = self.render(messages)
        stop = cf.merge_stops(stop, self.stop_markers)  # never run on into the next turn
        usage = Usage()
        with self._lock:
            _perf_reset(self.llm)
            tokens, room = self._prompt_tokens(prompt)
            out = self.llm.create_completion(
                prompt=tokens,
                max_tokens=min(max_tokens, room),
                temperature=temperature,
                top_p=1.0,
                top_k=0 if temperature > 0 else 1,
                stop=list(stop) if stop else None,
                grammar=self._grammar(grammar) if grammar else None,
            )
            perf = _perf(self.llm)
            if self._cache_state == "missed" or self._cache_state.startswith("restored-stale"):
                self._save()
        text = out["choices"][0]["text"]
        n_out = int(out.get("usage", {}).get("completion_tokens", 0))
        self.last_usage = usage.done(len(tokens), n_out)
        if perf is not None:
            self.last_usage.prompt_eval_tokens = perf.n_p_eval
            self.last_usage.prompt_eval_s = perf.t_p_eval_ms / 1000
            self.last_usage.decode_s = perf.t_eval_ms / 1000
        return cut_at_stop(text, stop)

    def stream(self, messages: list[Message], *, stop: list[str] | None = None, max_tokens: int | None = None,
               grammar: str | None = None, temperature: float | None = None) -> Iterator[str]:
        """What `generate` returns, sent on as llama.cpp samples it (cut at `stop`; the same grammar)."""
        max_tokens = max_tokens or self.default_max_tokens
        temperature = self.default_temperature if temperature is None else temperature
        prompt = self.render(messages)
        stop = cf.merge_stops(stop, self.stop_markers)
        usage = Usage()
        n_out = 0
        with self._lock:
            tokens, room = self._prompt_tokens(prompt)
            chunks = self.llm.create_completion(
                prompt=tokens, max_tokens=min(max_tokens, room), temperature=temperature, top_p=1.0,
                top_k=0 if temperature > 0 else 1, stop=list(stop) if stop else None,
                grammar=self._grammar(grammar) if grammar else None, stream=True)

            def texts() -> Iterator[str]:
                nonlocal n_out
                for chunk in chunks:
                    n_out += 1
                    yield chunk["choices"][0]["text"]

            yield from cut_stream(texts(), stop)
            if self._cache_state == "missed" or self._cache_state.startswith("restored-stale"):
                self._save()
        self.last_usage = usage.done(len(tokens), n_out)

    # ---- prompt cache ---------------------------------------------------------------------------
    def _restore(self, tokens: list[int]) -> None:
        """Before the first call: load the saved KV state if it shares a long prefix with `tokens`."""
        self._cache_state = "missed"
        if self.cache_file is None:
            self._cache_state = "off"
            return
        if self.llm.n_tokens > 0 or not self.cache_file.is_file():
            return
        import llama_cpp

        n_ctx = self.llm.n_ctx()
        buf = (llama_cpp.llama_token * n_ctx)()
        n_out = ctypes.c_size_t(0)
        try:
            ok = llama_cpp.llama_state_load_file(self.llm._ctx.ctx, str(self.cache_file).encode(), buf, n_ctx,
                                                 ctypes.byref(n_out))
        except Exception:  # a cache is an optimisation: never fail a generation over it
            ok = False
        n = int(n_out.value) if ok else 0
        saved = list(buf[:n])
        common = 0
        for a, b in zip(saved, tokens):
            if a != b:
                break
            common += 1
        if not ok or common < min(64, len(tokens) // 2):
            self.llm.reset()
            self.llm._ctx.kv_cache_clear()
            return
        self.llm.input_ids[:n] = saved
        self.llm.n_tokens = n
        if hasattr(self.llm, "_requires_eval"):
            self.llm._requires_eval = True
        # A partly stale cache (the fixed prompt changed) is used, then replaced after this call.
        self._cache_state = f"restored {common}" if common >= 0.9 * len(tokens) else f"restored-stale {common}"

    def _save(self) -> None:
        """After the first call that found no usable cache: save the state for the next process."""
        import llama_cpp

        self._cache_state = "saved"
        assert self.cache_file is not None
        n = int(self.llm.n_tokens)
        if n < 64:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")
            arr = (llama_cpp.llama_token * n)(*self.llm.input_ids[:n].tolist())
            if llama_cpp.llama_state_save_file(self.llm._ctx.ctx, str(tmp).encode(), arr, n):
                os.replace(tmp, self.cache_file)
            else:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass

    def _grammar(self, text: str) -> Any:
        if text in self._grammars:
            return self._grammars[text]
        import llama_cpp
        from llama_cpp import LlamaGrammar

        # LlamaGrammar.from_string does not parse (0.3.x); an unparsable grammar would crash the sampler
        # (NULL pointer), so parse it once here with llama.cpp's own parser.
        probe = llama_cpp.llama_sampler_init_grammar(self.llm._model.vocab, text.encode("utf-8"), b"root")
        if not probe:
            raise GrammarError("invalid GBNF grammar: llama.cpp cannot parse it (see the grammar's syntax and its root rule)")
        llama_cpp.llama_sampler_free(probe)
        g = LlamaGrammar.from_string(text, verbose=False)
        if len(self._grammars) > 32:
            self._grammars.clear()
        self._grammars[text] = g
        return g


def prompt_cache_dir(settings: "LLMSettings") -> Path | None:
    """Where prompt KV states are kept: llm.prompt_cache_dir; "auto" means $SYNTHEHR_CACHE_DIR, else
    $XDG_CACHE_HOME/synthehr/prompt-cache, else ~/.cache/synthehr/prompt-cache; null turns the cache off."""
    value = getattr(settings, "prompt_cache_dir", "auto")
    if value is None or value == "":
        return None
    if value != "auto":
        return Path(value).expanduser()
    if os.environ.get("SYNTHEHR_CACHE_DIR"):
        return Path(os.environ["SYNTHEHR_CACHE_DIR"]).expanduser() / "prompt-cache"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "synthehr" / "prompt-cache"


def _perf_reset(llm: Any) -> None:
    try:
        import llama_cpp

        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    except Exception:  # perf counters are diagnostics only
        pass


def _perf(llm: Any) -> Any:
    try:
        import llama_cpp

        return llama_cpp.llama_perf_context(llm._ctx.ctx)
    except Exception:
        return None


def _token_text(llm: Any, token: int) -> str:
    if token is None or token < 0:
        return ""
    try:
        return llm.detokenize([token], special=True).decode("utf-8", errors="ignore")
    except TypeError:  # older llama-cpp-python without `special`
        return llm.detokenize([token]).decode("utf-8", errors="ignore")
