"""OpenAI-compatible backend: vLLM, TGI, Ollama, llama.cpp server or any /v1/chat/completions
server, by ``llm.base_url`` and ``llm.model``. The server applies the model's chat template.

- The API key is read from the environment variable named by ``llm.api_key_env`` (never from config).
- Grammar-constrained decoding: the GBNF text goes in the request field named by
  ``llm.grammar_param`` (vLLM: ``structured_outputs.grammar`` or, before 0.10, ``guided_grammar``;
  llama.cpp server: ``grammar``; ``auto`` tries these in turn). Support is verified, not assumed:
  at first use the backend sends one tiny constrained request and checks that the reply obeys
  the grammar. A server that ignores the field (it drops unknown fields silently) is reported
  once, naming the field to set, and the agent runs unconstrained with the router's guard;
  ``supports_grammar`` is the probe's result. With none set it is False and nothing is probed.
- Native tool calling: ``generate_tool_call(messages, tools)`` for servers that offer it
  (vLLM with --enable-auto-tool-choice, Ollama, llama.cpp server --jinja).
- Uses the ``openai`` client when installed, else plain httpx. Unreachable servers, refused keys
  and server errors raise LLMUnavailable with one clear line (no traceback for the user).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synthehr.agent.llm.common import Usage
from synthehr.agent.llm.base import Message, cut_at_stop, cut_stream

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.base import ToolSpec
    from synthehr.configs.settings import LLMSettings

MAX_STOP = 4  # the OpenAI API accepts at most 4 stop strings; the rest are cut here
log = logging.getLogger("synthehr.llm")

# Where each server reads a GBNF grammar (tried in this order by grammar_param: auto).
GRAMMAR_FIELDS = {"grammar": "llama.cpp server", "structured_outputs.grammar": "vLLM >= 0.10",
                  "guided_grammar": "vLLM < 0.10"}
# The probe: a reply no model writes by itself, so an obeying reply proves the grammar was applied.
PROBE_GRAMMAR = 'root ::= "ZQX-" [0-9] [0-9]'
PROBE_REPLY = re.compile(r"^\s*ZQX-[0-9]{2}\s*$")
GRAMMAR_HINT = ("set llm.grammar_param to structured_outputs.grammar (vLLM >= 0.10), guided_grammar (vLLM < 0.10) "
                "or grammar (llama.cpp server)")
CHARS_PER_TOKEN = 3.0  # before the server has reported any usage: a cautious estimate (English ~4)


def _unavailable(msg: str) -> Exception:
    from synthehr.agent.llm.common import LLMUnavailable

    return LLMUnavailable(msg)


@dataclass
class ToolCall:
    """One native tool call. `arguments` is None when the server's JSON did not parse (see `raw_arguments`)."""

    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str
    id: str = ""


@dataclass
class ToolCallReply:
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None


def openai_tools(specs: Iterable["ToolSpec"]) -> list[dict[str, Any]]:
    """OpenAI `tools` entries for ToolSpecs (name, description, JSON schema of the args model)."""
    return [
        {"type": "function",
         "function": {"name": s.name, "description": s.description, "parameters": s.args_model.model_json_schema()}}
        for s in specs
    ]


def _fewest_stops(stop: Iterable[str]) -> list[str]:
    """The stop strings without those that contain another (the shorter one stops first anyway), so the
    API's limit of 4 keeps the ones that matter; the full list is still cut locally."""
    items = list(dict.fromkeys(s for s in stop if s))
    return [s for s in items if not any(o != s and o in s for o in items)]


def _set_dotted(body: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = body
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value


class OpenAIBackend:
    name = "openai"
    supports_tool_calls = True

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout_s: float = 120.0, grammar_param: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.0, transport: str = "auto", api_key_env: str = "OPENAI_API_KEY",
                 n_ctx: int = 4096) -> None:
        if not base_url:
            raise _unavailable("llm.backend is 'openai' but llm.base_url is not set (e.g. http://localhost:8000/v1)")
        if not base_url.startswith(("http://", "https://")):
            raise _unavailable(f"llm.base_url must start with http:// or https:// (got {base_url!r})")
        self.base_url = base_url.rstrip("/")
        self.model_id = model or ""  # empty: the server's first model, found on first use
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.grammar_param = grammar_param or None
        self._grammar_ok: bool | None = None if self.grammar_param else False
        self.grammar_notice = ""  # why the grammar is not used (set once by the probe)
        self.n_ctx = n_ctx
        self._context_window: int | None = None
        self._chars_per_token = CHARS_PER_TOKEN
        self.default_max_tokens = max_tokens
        self.default_temperature = temperature
        self.last_usage = Usage()
        self._lock = threading.Lock()
        if transport == "auto":
            import importlib.util

            transport = "openai" if importlib.util.find_spec("openai") else "httpx"
        if transport not in ("openai", "httpx"):
            raise ValueError(f"transport must be auto, openai or httpx (got {transport!r})")
        self.transport = transport
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: "LLMSettings") -> "OpenAIBackend":
        return cls(
            settings.base_url or "",
            settings.model,
            api_key=os.environ.get(settings.api_key_env) or None,
            api_key_env=settings.api_key_env,
            timeout_s=settings.timeout_s,
            grammar_param=settings.grammar_param,
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            n_ctx=settings.n_ctx,
        )

    # ---- grammar support, verified ---------------------------------------------------------------
    @property
    def supports_grammar(self) -> bool:
        """Whether the server applies the grammar: probed once, at first use."""
        if self._grammar_ok is None:
            self._grammar_ok = self.probe_grammar()
        return self._grammar_ok

    @supports_grammar.setter
    def supports_grammar(self, value: bool) -> None:
        self._grammar_ok = bool(value)

    def probe_grammar(self) -> bool:
        """Send one tiny constrained request per candidate field and keep the first the server obeys.
        Says so once (a warning) when none is obeyed; then the agent runs unconstrained."""
        fields = list(GRAMMAR_FIELDS) if self.grammar_param == "auto" else [str(self.grammar_param)]
        seen: list[str] = []
        for f in fields:
            body = self._body([{"role": "user", "content": "Reply with a code."}], None, 8, 0.0)
            _set_dotted(body, f, PROBE_GRAMMAR)
            try:
                data = self._request("POST", "/chat/completions", body)
                text = ((self._choice(data).get("message") or {}).get("content") or "")
            except Exception as exc:  # noqa: BLE001 - a server that refuses the field (400/422) lacks it
                if getattr(exc, "status", None) is None:
                    raise  # unreachable server, timeout: the user must know now
                text = f"<{getattr(exc, 'status')}>"
            if PROBE_REPLY.match(text):
                self.grammar_param = f
                return True
            seen.append(f"{f}: {' '.join(text.split())[:40]!r}")
        self.grammar_notice = (f"the LLM server at {self.base_url} ignored the grammar sent in "
                               f"{' / '.join(fields)} (probe replies {'; '.join(seen)}): {GRAMMAR_HINT}. "
                               "Running without grammar-constrained decoding; the router still guards tool choice.")
        log.warning(self.grammar_notice)
        return False

    # ---- the prompt budget --------------------------------------------------------------------------
    @property
    def context_window(self) -> int:
        """The model's context in tokens: the server's model info (vLLM max_model_len, llama.cpp n_ctx)
        when it says, else llm.n_ctx."""
        if self._context_window is None:
            self._context_window = self._server_context() or self.n_ctx
        return self._context_window

    def _server_context(self) -> int | None:
        try:
            data = self._request("GET", "/models", None)
        except Exception:  # noqa: BLE001 - model info is optional; llm.n_ctx is the fallback
            return None
        for m in data.get("data", []) or []:
            if not isinstance(m, dict) or (self.model_id and m.get("id") not in (self.model_id, None)):
                continue
            meta = m.get("meta") if isinstance(m.get("meta"), dict) else {}
            for key in ("max_model_len", "n_ctx", "context_length", "max_context_length"):
                v = m.get(key) or meta.get(key)
                if isinstance(v, int) and v > 0:
                    return v
        return None

    def count_tokens(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> int:
        """Estimated prompt tokens: characters over the characters per token the server's own usage
        reports showed (cautious until the first reply), plus the chat template's per-message overhead."""
        chars = sum(len(m.get("content") or "") for m in messages)
        if tools:
            chars += len(json.dumps(tools))
        return int(chars / self._chars_per_token) + 8 * len(messages) + 16

    def _learn_ratio(self, body: dict[str, Any], prompt_tokens: int) -> None:
        chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
        overhead = 8 * len(body.get("messages", [])) + 16
        if prompt_tokens > overhead and chars > 200:
            # 10 % margin under the measured ratio: the next prompt may tokenize a little worse.
            self._chars_per_token = max(1.5, 0.9 * chars / (prompt_tokens - overhead))

    # ---- the model name -------------------------------------------------------------------------
    def resolve_model(self) -> str:
        """The model name sent to the server: llm.model, else the first model the server lists."""
        if not self.model_id:
            self.model_id = self._first_model()
        return self.model_id

    def _first_model(self) -> str:
        data = self._request("GET", "/models", None)
        models = [m.get("id") for m in data.get("data", []) if isinstance(m, dict) and m.get("id")]
        if not models:
            raise _unavailable(f"the LLM server at {self.base_url} lists no models: set llm.model")
        return str(models[0])

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, messages: list[Message], *, stop: list[str] | None = None, max_tokens: int | None = None,
                 grammar: str | None = None, temperature: float | None = None) -> str:
        body = self._body(messages, stop, max_tokens, temperature)
        if grammar and self.supports_grammar:
            _set_dotted(body, str(self.grammar_param), grammar)
        usage = Usage()
        data = self._request("POST", "/chat/completions", body)
        choice = self._choice(data)
        text = (choice.get("message") or {}).get("content") or ""
        u = data.get("usage") or {}
        self.last_usage = usage.done(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        self._learn_ratio(body, self.last_usage.prompt_tokens)
        return cut_at_stop(text, stop)

    def stream(self, messages: list[Message], *, stop: list[str] | None = None, max_tokens: int | None = None,
               grammar: str | None = None, temperature: float | None = None) -> Iterator[str]:
        """What `generate` returns, sent on as the server streams it (`"stream": true`, server-sent events;
        cut at `stop` here as well, since servers differ in how they end on one)."""
        body = self._body(messages, stop, max_tokens, temperature)
        if grammar and self.supports_grammar:
            _set_dotted(body, str(self.grammar_param), grammar)
        body["stream"] = True
        yield from cut_stream(self._stream_texts(body), stop)

    def _stream_texts(self, body: dict[str, Any]) -> Iterator[str]:
        with self._lock:
            if self.transport == "openai":
                import openai

                if self._client is None:
                    self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "not-needed",
                                                 timeout=self.timeout_s, max_retries=0)
                std = {k: body[k] for k in ("model", "messages", "max_tokens", "temperature", "stop") if k in body}
                extra = {k: v for k, v in body.items() if k not in std and k != "stream"}
                try:
                    for chunk in self._client.chat.completions.create(**std, stream=True, extra_body=extra or None):
                        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                            yield chunk.choices[0].delta.content
                except openai.APIConnectionError:
                    raise _unavailable(f"cannot reach the LLM server at {self.base_url}: is it running? "
                                       "check llm.base_url") from None
                except openai.APIStatusError as exc:
                    raise self._status_error(exc.status_code, exc.response.text if exc.response is not None
                                             else str(exc)) from None
                return
            import httpx

            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s)
            try:
                with self._client.stream("POST", self.base_url + "/chat/completions", json=body,
                                         headers=self._headers()) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise self._status_error(r.status_code, r.text)
                    for line in r.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        try:
                            event = json.loads(data)
                        except ValueError:
                            continue
                        choices = event.get("choices") or [{}]
                        piece = ((choices[0] or {}).get("delta") or {}).get("content") or (choices[0] or {}).get("text")
                        if piece:
                            yield str(piece)
            except httpx.HTTPError as exc:
                raise self._transport_error(exc) from None

    def _transport_error(self, exc: Exception) -> Exception:
        """One message for a server that timed out or cannot be reached (request and stream alike)."""
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return _unavailable(f"the LLM server at {self.base_url} did not answer within {self.timeout_s:g} s "
                                "(raise llm.timeout_s or check the server)")
        return _unavailable(f"cannot reach the LLM server at {self.base_url}: is it running? check llm.base_url "
                            f"({type(exc).__name__})")

    def generate_tool_call(self, messages: list[Message], tools: list[dict[str, Any]], *,
                           tool_choice: str | dict[str, Any] = "auto", max_tokens: int | None = None,
                           temperature: float | None = None) -> ToolCallReply:
        """Ask the server for native tool calls. `tools`: OpenAI tool entries, or plain
        {"name", "description", "parameters"} dicts (see openai_tools())."""
        body = self._body(messages, None, max_tokens, temperature)
        body["tools"] = [t if "function" in t else {"type": "function", "function": t} for t in tools]
        body["tool_choice"] = tool_choice
        usage = Usage()
        data = self._request("POST", "/chat/completions", body)
        choice = self._choice(data)
        msg = choice.get("message") or {}
        calls = []
        for c in msg.get("tool_calls") or []:
            fn = c.get("function") or {}
            raw = fn.get("arguments") or ""
            if isinstance(raw, dict):  # some servers send an object
                args, raw = raw, json.dumps(raw)
            else:
                try:
                    args = json.loads(raw) if raw.strip() else {}
                except json.JSONDecodeError:
                    args = None
                if args is not None and not isinstance(args, dict):
                    args = None
            calls.append(ToolCall(name=str(fn.get("name") or ""), arguments=args, raw_arguments=raw, id=str(c.get("id") or "")))
        u = data.get("usage") or {}
        self.last_usage = usage.done(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        # No ratio learnt here: servers render tools differently (llama.cpp leaves them out when one is named).
        return ToolCallReply(content=msg.get("content") or "", tool_calls=calls, finish_reason=choice.get("finish_reason"))

    # ---- internals ------------------------------------------------------------------------------
    def _body(self, messages: list[Message], stop: list[str] | None, max_tokens: int | None,
              temperature: float | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.resolve_model(),
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_tokens or self.default_max_tokens,
            "temperature": self.default_temperature if temperature is None else temperature,
        }
        if stop:
            body["stop"] = _fewest_stops(stop)[:MAX_STOP]
        return body

    def _choice(self, data: dict[str, Any]) -> dict[str, Any]:
        choices = data.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            raise _unavailable(f"the LLM server at {self.base_url} sent a reply without choices")
        return choices[0]

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        with self._lock:
            if self.transport == "openai":
                return self._request_openai(method, path, body)
            return self._request_httpx(method, path, body)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _request_httpx(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout_s)
        url = self.base_url + path
        try:
            r = self._client.request(method, url, json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if r.status_code >= 400:
            raise self._status_error(r.status_code, r.text)
        try:
            data = r.json()
        except ValueError:
            raise _unavailable(f"the LLM server at {self.base_url} did not answer with JSON (is llm.base_url the /v1 URL?)") from None
        if not isinstance(data, dict):
            raise _unavailable(f"the LLM server at {self.base_url} sent an unexpected reply")
        return data

    def _request_openai(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        import openai

        if self._client is None:
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "not-needed",
                                         timeout=self.timeout_s, max_retries=0)
        try:
            if method == "GET" and path == "/models":
                return {"data": [m.model_dump() for m in self._client.models.list().data]}
            assert body is not None
            std = {k: body[k] for k in ("model", "messages", "max_tokens", "temperature", "stop", "tools", "tool_choice") if k in body}
            extra = {k: v for k, v in body.items() if k not in std}
            resp = self._client.chat.completions.create(**std, extra_body=extra or None)
            return resp.model_dump()
        except openai.APITimeoutError:
            raise _unavailable(f"the LLM server at {self.base_url} did not answer within {self.timeout_s:g} s "
                               "(raise llm.timeout_s or check the server)") from None
        except openai.APIConnectionError:
            raise _unavailable(f"cannot reach the LLM server at {self.base_url}: is it running? check llm.base_url") from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc.status_code, exc.response.text if exc.response is not None else str(exc)) from None

    def _status_error(self, status: int, text: str) -> Exception:
        detail = text
        try:
            j = json.loads(text)
            err = j.get("error", j) if isinstance(j, dict) else j
            detail = err.get("message", err) if isinstance(err, dict) else err
        except (ValueError, AttributeError):
            pass
        detail = " ".join(str(detail).split())[:300]
        if status in (401, 403):
            exc = _unavailable(f"the LLM server at {self.base_url} refused the request ({status}): set the API key in "
                               f"${self.api_key_env} ({detail})")
        elif re.search(r"context|maximum.{0,20}length|too long", detail, re.I):
            exc = _unavailable(f"the LLM server at {self.base_url} answered {status}: {detail} (start the server with a "
                               "larger context, e.g. llama.cpp server --n_ctx 4096, or lower llm.n_ctx so the prompt "
                               "budget trims more)")
        else:
            exc = _unavailable(f"the LLM server at {self.base_url} answered {status}: {detail}")
        exc.status = status  # type: ignore[attr-defined]
        return exc
