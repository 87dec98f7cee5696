"""Hugging Face transformers backend: a local model directory, a cached hub id, or a GGUF file
(dequantised by transformers). Offline only: nothing is downloaded at run time.

- Prompt: LLaMA-2 chat models get [INST] <<SYS>> (synthehr.agent.llm.chat_format); other models their own chat
  template; ``llm.chat_format`` overrides.
- Greedy decoding at temperature 0; sampling otherwise.
- ``stop`` strings end generation (a stopping criterion) and are cut from the text.
- ``grammar`` (GBNF text) is compiled by xgrammar and applied as a logits processor.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthehr.agent.llm import chat_format as cf
from synthehr.agent.llm.common import GrammarError, Usage
from synthehr.agent.llm.base import Message, cut_at_stop, cut_stream

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.configs.settings import LLMSettings

# End-of-turn tokens of common chat formats; generation stops on any the tokenizer has.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def _unavailable(msg: str) -> Exception:
    from synthehr.agent.llm.common import LLMUnavailable

    return LLMUnavailable(msg)


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s.endswith(".gguf") or os.sep in s and s.count("/") != 1


class TransformersBackend:
    """A causal LM loaded with transformers. Build it with `load()` or `from_settings()`."""

    name = "transformers"
    supports_grammar = True

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str, fmt: str, template: str | None,
                 max_tokens: int = 256, temperature: float = 0.0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.chat_format = fmt
        self.template = template
        self.default_max_tokens = max_tokens
        self.default_temperature = temperature
        self.last_usage = Usage()
        self._grammar_compiler: Any = None
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.eos_token_ids = self._eos_ids()
        self.context_window = 4096  # tokens: min(llm.n_ctx, the model's max_position_embeddings) once loaded
        self.stop_markers = cf.turn_markers(fmt, template, getattr(tokenizer, "eos_token", None))

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: "LLMSettings", path: Path | None = None) -> "TransformersBackend":
        return cls.load(
            str(path) if path is not None else str(settings.model),
            dtype=settings.dtype,
            device=settings.device,
            chat_format=settings.chat_format,
            n_threads=settings.n_threads,
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            n_ctx=settings.n_ctx,
        )

    @classmethod
    def load(cls, source: str, *, dtype: str = "auto", device: str = "cpu", chat_format: str = "auto",
             n_threads: int = 0, max_tokens: int = 256, temperature: float = 0.0,
             n_ctx: int = 4096) -> "TransformersBackend":
        """Load a model offline. `source`: a model directory, a .gguf file, or a hub id that is
        already in the local Hugging Face cache."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        src = os.path.expanduser(source)
        kwargs: dict[str, Any] = {"local_files_only": True}
        load_from = src
        if Path(src).exists():
            p = Path(src)
            if p.is_file():
                if p.suffix != ".gguf":
                    raise _unavailable(f"llm.model {source} is a file but not a .gguf: give the model's directory")
                load_from, kwargs["gguf_file"] = str(p.parent), p.name
        elif _looks_like_path(src):
            raise _unavailable(f"llm.model {source} does not exist")

        try:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:  # pragma: no cover - transformers is a core dependency
            raise _unavailable(f"the transformers backend needs transformers and torch ({exc})") from None
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        if n_threads > 0:
            torch.set_num_threads(n_threads)
        try:
            config = AutoConfig.from_pretrained(load_from, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
        except ImportError as exc:  # e.g. a .gguf without the gguf package: say what to install
            raise _unavailable(f"cannot load model {source} with transformers: {_import_hint(exc)}") from None
        except (OSError, ValueError) as exc:
            hint = ("" if Path(src).exists() else
                    " (a hub id must already be in the local Hugging Face cache: run `hf download "
                    f"{source}` once with network access, or set llm.model to a local directory)")
            raise _unavailable(f"cannot load model {source}{hint}: {str(exc).splitlines()[0]}") from None

        dev = _resolve_device(device, torch)
        torch_dtype = _resolve_dtype(dtype, config, dev, torch)
        try:
            model = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch_dtype, **kwargs)
        except ImportError as exc:
            raise _unavailable(f"cannot load model weights from {source} with transformers: {_import_hint(exc)}") from None
        except (OSError, ValueError, RuntimeError) as exc:  # wrong or damaged files: the user's to fix
            raise _unavailable(f"cannot load model weights from {source}: {str(exc).splitlines()[0]}") from None
        model.to(dev)
        model.eval()

        template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None
        name = f"{source} {getattr(config, '_name_or_path', '')}"
        try:
            fmt = cf.resolve_format(chat_format, name=name, model_type=getattr(config, "model_type", None),
                                             template=template)
        except ValueError as exc:
            raise _unavailable(str(exc)) from None
        window = int(getattr(config, "max_position_embeddings", 0) or 0)
        backend = cls(model, tokenizer, model_id=source, fmt=fmt, template=template,
                      max_tokens=max_tokens, temperature=temperature)
        backend.context_window = min(n_ctx, window) if window > 0 else n_ctx
        return backend

    # ---- generation -----------------------------------------------------------------------------
    def render(self, messages: list[Message]) -> str:
        tok = self.tokenizer
        return cf.render(messages, self.chat_format, template=self.template,
                                  bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")

    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens of `messages` as this backend renders them (for the prompt budget)."""
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def _prepare(self, messages: list[Message], stop: list[str] | None, max_tokens: int | None,
                 temperature: float | None) -> tuple[Any, int, Any, Any, list[str]]:
        """(input ids, prompt tokens, generation config, stopping criteria, stop strings) of one generation."""
        from transformers import GenerationConfig, StoppingCriteriaList

        max_tokens = max_tokens or self.default_max_tokens
        temperature = self.default_temperature if temperature is None else temperature
        prompt = self.render(messages)
        stop = cf.merge_stops(stop, self.stop_markers)  # never run on into the next turn
        enc = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        input_ids = enc["input_ids"].to(self.model.device)
        n_prompt = int(input_ids.shape[1])
        eos = self.eos_token_ids
        cfg = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=temperature > 0,
            eos_token_id=eos or None,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (eos[0] if eos else 0),
            **({"temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {}),
        )
        criteria = StoppingCriteriaList()
        if stop:
            criteria.append(_StopStrings(self.tokenizer, n_prompt, list(stop)))
        return input_ids, n_prompt, cfg, criteria, list(stop or [])

    def _run(self, input_ids: Any, cfg: Any, criteria: Any, grammar: str | None, streamer: Any = None) -> Any:
        import torch

        processors = []
        with self._lock:
            if grammar:
                from xgrammar.contrib.hf import LogitsProcessor

                processors.append(LogitsProcessor(self._compiled(grammar)))
            with torch.inference_mode():
                return self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=cfg,
                    stopping_criteria=criteria,
                    logits_processor=processors or None,
                    **({"streamer": streamer} if streamer is not None else {}),
                )

    def generate(self, messages: list[Message], *, stop: list[str] | None = None, max_tokens: int | None = None,
                 grammar: str | None = None, temperature: float | None = None) -> str:
        usage = Usage()
        input_ids, n_prompt, cfg, criteria, stop = self._prepare(messages, stop, max_tokens, temperature)
        out = self._run(input_ids, cfg, criteria, grammar)
        new = out[0, n_prompt:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        self.last_usage = usage.done(n_prompt, int(new.shape[0]))
        return cut_at_stop(text, stop)

    def stream(self, messages: list[Message], *, stop: list[str] | None = None, max_tokens: int | None = None,
               grammar: str | None = None, temperature: float | None = None) -> Iterator[str]:
        """What `generate` returns, sent on as the model writes it (transformers' TextIteratorStreamer; the
        generation runs in a worker thread, under the same lock; cut at `stop`)."""
        import threading

        from transformers import TextIteratorStreamer

        usage = Usage()
        input_ids, n_prompt, cfg, criteria, stop = self._prepare(messages, stop, max_tokens, temperature)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failed: list[BaseException] = []
        done: list[Any] = []

        def work() -> None:
            try:
                done.append(self._run(input_ids, cfg, criteria, grammar, streamer))
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                failed.append(exc)
                streamer.end()

        worker = threading.Thread(target=work, name="synthehr-hf-stream", daemon=True)
        worker.start()
        yield from cut_stream(streamer, stop)
        worker.join()
        if failed:
            raise failed[0]
        if done:
            self.last_usage = usage.done(n_prompt, int(done[0].shape[1]) - n_prompt)

    # ---- internals ------------------------------------------------------------------------------
    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for v in (self.tokenizer.eos_token_id, gen_eos):
            for i in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(i, int) and i not in ids:
                    ids.append(i)
        vocab = self.tokenizer.get_vocab()
        for t in _END_OF_TURN:
            if t in vocab and vocab[t] not in ids:
                ids.append(vocab[t])
        return ids

    def _compiled(self, grammar: str) -> Any:
        if grammar in self._grammars:
            return self._grammars[grammar]
        import xgrammar as xgr

        if self._grammar_compiler is None:
            vocab_size = self.model.get_output_embeddings().weight.shape[0]
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab_size,
                                                      stop_token_ids=self.eos_token_ids or None)
            self._grammar_compiler = xgr.GrammarCompiler(info)
        try:
            compiled = self._grammar_compiler.compile_grammar(grammar)
        except Exception as exc:  # xgrammar raises RuntimeError subclasses on syntax errors
            raise GrammarError(f"invalid GBNF grammar: {str(exc).strip().splitlines()[0]}") from None
        if len(self._grammars) > 32:
            self._grammars.clear()
        self._grammars[grammar] = compiled
        return compiled


class _StopStrings:
    """Stop when the generated text contains any stop string (the text is cut afterwards)."""

    def __init__(self, tokenizer: Any, n_prompt: int, stops: list[str]) -> None:
        self.tokenizer, self.n_prompt, self.stops = tokenizer, n_prompt, stops

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = []
        for row in input_ids:
            text = self.tokenizer.decode(row[self.n_prompt:], skip_special_tokens=True)
            done.append(any(s in text for s in self.stops))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _import_hint(exc: ImportError) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "gguf" in text.lower():
        return 'loading a .gguf with transformers needs the gguf package: pip install "gguf>=0.10"'
    return text


def _resolve_device(device: str, torch: Any) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise _unavailable(f"llm.device is {device!r} but torch sees no CUDA GPU (use cpu)")
    return device


def _resolve_dtype(dtype: str, config: Any, device: str, torch: Any) -> Any:
    """auto: the checkpoint's dtype on a GPU; on a CPU bfloat16 for 16-bit checkpoints (float16
    matmuls are slow or missing there), else float32."""
    if dtype != "auto":
        return getattr(torch, dtype)
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    if device == "cpu":
        return torch.bfloat16 if saved in (torch.float16, torch.bfloat16) else torch.float32
    return saved or torch.float16
