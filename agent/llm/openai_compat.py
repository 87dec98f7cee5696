"""OpenAI-compatible backend: vLLM, TGI, Ollama, llama.cpp server or any /v1/chat/completions
server, by ``llm.base_url`` and ``llm.model``. The server applies the model's chat template.

- The API key is read from the environment variable named by ``llm.api_key_env`` (never from config).
- Grammar-constrained decoding: the GBNF text goes in the request field named by
  ``llm.grammar_param`` (vLLM: ``structured_outputs.grammar`` or, before 0.10, ``guided_grammar``;
  llama.cpp server: ``grammar``). With none set the backend reports supports_grammar=False.
- Native tool calling: ``generate_tool_call(messages, tools)`` for servers that offer it
  (vLLM with --enable-auto-tool-choice, Ollama, llama.cpp server --jinja).
- Uses the ``openai`` client when installed, else plain httpx. Unreachable servers, refused keys
  and server errors raise LLMUnavailable with one clear line (no traceback for the user).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synthehr.agent.llm.common import Usage
from synthehr.agent.llm.base import Message, cut_at_stop

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.base import ToolSpec
    from synthehr.configs.settings import LLMSettings

MAX_STOP = 4  # the OpenAI API accepts at most 4 stop strings; the rest are cut here


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
                 temperature: float = 0.0, transport: str = "auto", api_key_env: str = "OPENAI_API_KEY") -> None:
        if not base_url:
            raise _unavailable("llm.backend is 'openai' but llm.base_url is not set (e.g. http://localhost:8000/v1)")
        if not base_url.startswith(("http://", "https://")):
            raise _unavailable(f"llm.base_url must start with http:// or https:// (got {base_url!r})")
        self.base_url = base_url.rstrip("/")
        self.model_id = model or ""  # empty: the server's first model, found on first use
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.grammar_param = grammar_param
        self.supports_grammar = bool(grammar_param)
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
        )

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
        if grammar and self.grammar_param:
            _set_dotted(body, self.grammar_param, grammar)
        usage = Usage()
        data = self._request("POST", "/chat/completions", body)
        choice = self._choice(data)
        text = (choice.get("message") or {}).get("content") or ""
        u = data.get("usage") or {}
        self.last_usage = usage.done(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        return cut_at_stop(text, stop)

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
            body["stop"] = list(stop)[:MAX_STOP]
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
        except httpx.TimeoutException:
            raise _unavailable(f"the LLM server at {self.base_url} did not answer within {self.timeout_s:g} s "
                               "(raise llm.timeout_s or check the server)") from None
        except httpx.HTTPError as exc:
            raise _unavailable(f"cannot reach the LLM server at {self.base_url}: is it running? check llm.base_url "
                               f"({type(exc).__name__})") from None
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
            return _unavailable(f"the LLM server at {self.base_url} refused the request ({status}): set the API key in "
                                f"${self.api_key_env} ({detail})")
        return _unavailable(f"the LLM server at {self.base_url} answered {status}: {detail}")
