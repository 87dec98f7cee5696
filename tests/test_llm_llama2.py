"""The LLaMA-2 prompt format GENERATED under the agent's grammar, the prompt budget, and the agent end to
end through the transformers runtime of a folder-based LLaMA-architecture model.

The model is a tiny LLaMA (LlamaConfig, random weights) with a SentencePiece-style tokenizer built here
(BPE over "▁"-marked words, as LLaMA-2's tokenizer.model): after "[/INST]" the reply's first token is
"▁Thought", the leading space the grammar must allow (issue 16). Offline: nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from synthehr.agent import prompts
from synthehr.agent.grammar import build_step_grammar, grammar_accepts
from synthehr.agent.llm import chat_format as cf
from synthehr.agent.llm.budget import compact_tools, fit_messages, native_request
from synthehr.agent.llm.factory import LLMUnavailable, create_backend
from synthehr.configs.settings import ConfigError, LLMSettings
from synthehr.tools.registry import default_registry

HEADLINE = ("generate 2000 Type 2 diabetes patients EHR data with 20 important diabetes observations based on the "
            "US population")
STEP = re.compile(r"^Thought: (?P<thought>.*)\n(?:Action: (?P<tool>\w+)\nAction Input: (?P<args>\{.*\})|"
                  r"Final Answer: (?P<final>.*))$", re.S)


def _agent_messages(registry: Any, request: str = HEADLINE) -> list[dict[str, str]]:
    from synthehr.configs.settings import load_settings

    settings = load_settings(env={}, workspace_config=False)
    return ([{"role": "system", "content": prompts.system_prompt(registry, settings)}]
            + prompts.few_shot_messages(registry) + [{"role": "user", "content": prompts.user_message(request)}])


@pytest.fixture(scope="module")
def registry() -> Any:
    return default_registry()


@pytest.fixture(scope="module")
def sp_llama_dir(tmp_path_factory: pytest.TempPathFactory, registry: Any) -> Path:
    """A 2-layer LLaMA with random weights and a SentencePiece-style BPE tokenizer (Metaspace "▁"), saved
    like a hub checkpoint in a folder whose name marks it as LLaMA-2 chat (no chat template: auto -> llama-2)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("models") / "tiny-llama-2-7b-chat-hf"
    corpus = [m["content"] for m in _agent_messages(registry)] * 3
    corpus += ["[INST] <<SYS>> be careful <</SYS>> hello [/INST] Thought: I can answer now.\nFinal Answer: done </s>"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    # LLaMA-2's own decoder chain (tokenizer.json of meta-llama/Llama-2-7b-chat-hf).
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    alphabet = [chr(c) for c in range(33, 127)] + ["\n", "▁"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet, show_progress=False))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf_tok.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sp_llama(sp_llama_dir: Path) -> Any:
    return create_backend(LLMSettings(backend="transformers", model=str(sp_llama_dir), max_new_tokens=96))


# ---- grammar and prompt agree ------------------------------------------------------------------------
def test_the_tokenizer_is_sentencepiece_style_and_the_format_is_llama2(sp_llama: Any) -> None:
    assert sp_llama.chat_format == "llama-2"
    ids = sp_llama.tokenizer(" Thought:", add_special_tokens=False)["input_ids"]
    assert sp_llama.tokenizer.convert_ids_to_tokens(ids)[0].startswith("▁Thought")  # one "▁"-word token
    assert "[INST]" in sp_llama.stop_markers and "</s>" in sp_llama.stop_markers


def test_grammar_allows_the_space_llama2_puts_after_inst(sp_llama: Any, registry: Any) -> None:
    """The first-token mask: the shipped grammar must allow "▁Thought", the token a LLaMA tokenizer
    writes after "[/INST]"; without the optional lead it is forbidden (the bug of issue 16)."""
    import torch
    import xgrammar as xgr

    grammar = build_step_grammar(registry)
    assert grammar_accepts(grammar, " Thought: generate it.\nFinal Answer: done")
    assert grammar_accepts(grammar, "Thought: generate it.\nFinal Answer: done")
    old = grammar.replace('root ::= lead "Thought: "', 'root ::= "Thought: "')
    assert old != grammar
    tok = sp_llama.tokenizer
    space_thought = tok(" Thought: ", add_special_tokens=False)["input_ids"][0]  # "▁Thought..." as after [/INST]
    assert tok.convert_ids_to_tokens(space_thought).startswith("▁Thought")
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=sp_llama.model.get_output_embeddings().weight.shape[0])
    compiler = xgr.GrammarCompiler(info)

    def allowed_first(g: str) -> bool:
        matcher = xgr.GrammarMatcher(compiler.compile_grammar(g))
        mask = xgr.allocate_token_bitmask(1, info.vocab_size)
        matcher.fill_next_token_bitmask(mask)
        logits = torch.zeros(1, info.vocab_size)
        xgr.apply_token_bitmask_inplace(logits, mask)
        return bool(logits[0, space_thought] == 0)

    assert allowed_first(grammar)
    assert not allowed_first(old)


def test_llama2_steps_are_generated_under_the_agent_grammar(sp_llama: Any, registry: Any) -> None:
    """Real decoding (transformers + xgrammar) of the agent's full LLaMA-2 prompt, ending "[/INST]"."""
    messages = _agent_messages(registry)
    prompt = sp_llama.render(messages)
    assert prompt.startswith("<s>[INST] <<SYS>>\n") and prompt.endswith(" [/INST]")
    assert prompt.count("[INST]") == 1 + sum(1 for m in messages if m["role"] == "user") - 1
    import torch

    full = build_step_grammar(registry)
    runs = [(full, 0.0), (build_step_grammar(registry, tools=["generate_cohort"], allow_final=False), 0.0),
            (build_step_grammar(registry, allow_actions=False), 0.0), (full, 1.0)]
    parsed = 0
    for grammar, temperature in runs:
        torch.manual_seed(1)
        text = sp_llama.generate(messages, stop=prompts.STOP, grammar=grammar, temperature=temperature, max_tokens=120)
        assert text.lstrip().startswith("Thought: "), text  # the grammar's first rule, after the format's space
        assert not any(mark in text for mark in ("[INST]", "[/INST]", "</s>", "Observation:")), text
        m = STEP.match(text.lstrip())
        if m is None:  # random weights: cut by the token limit or a stop string inside the thought
            continue
        parsed += 1
        if m["tool"]:
            assert m["tool"] in registry.names and isinstance(json.loads(m["args"]), dict)
            assert grammar is not runs[2][0]
        else:
            assert grammar is not runs[1][0]
    assert parsed >= 1


def test_a_final_answer_never_runs_on_into_the_next_turn(sp_llama: Any) -> None:
    # A grammar that makes the model write past its turn, as LLaMA-2 did ("... [/INST] Thought: ...").
    grammar = r'root ::= " Thought: done\nFinal Answer: The cohort is ready. [INST] Request: more [/INST] Thought: " [a-z]{3,6}'
    text = sp_llama.generate([{"role": "user", "content": "hi"}], grammar=grammar, stop=prompts.STOP, max_tokens=80)
    assert text.strip() == "Thought: done\nFinal Answer: The cohort is ready."
    grammar2 = r'root ::= "Thought: done\nFinal Answer: ready.\nRequest: " [a-z]{3,6}'
    text2 = sp_llama.generate([{"role": "user", "content": "hi"}], grammar=grammar2, stop=prompts.STOP, max_tokens=80)
    assert text2 == "Thought: done\nFinal Answer: ready."


@pytest.mark.parametrize(("fmt", "template", "markers"), [
    ("llama-2", None, ["[INST]", "</s>"]),
    ("chatml", None, ["<|im_end|>", "<|im_start|>"]),
    ("template", "{{ '<|start_header_id|>' }}{{ m }}{{ '<|eot_id|>' }}", ["<|eot_id|>", "<|start_header_id|>"]),
])
def test_stop_strings_cover_each_formats_turn_markers(fmt: str, template: str | None, markers: list[str]) -> None:
    stops = cf.turn_markers(fmt, template)
    assert all(m in stops for m in markers)
    assert cf.merge_stops(["\nObservation"], stops)[0] == "\nObservation"


# ---- the prompt budget ----------------------------------------------------------------------------------
class CountingBackend:
    """A backend stand-in whose token count is characters / 4 (the budget only needs count_tokens)."""

    def __init__(self, window: int) -> None:
        self.context_window = window

    def count_tokens(self, messages: list[dict[str, str]], tools: list[dict[str, Any]] | None = None) -> int:
        return sum(len(m["content"]) for m in messages) // 4 + (len(json.dumps(tools)) // 4 if tools else 0)


def _long_turn(registry: Any) -> list[dict[str, str]]:
    msgs = _agent_messages(registry)
    for i in range(4):
        msgs += [{"role": "assistant", "content": f"Thought: step {i}\nAction: cohort_stats\nAction Input: {{}}"},
                 {"role": "user", "content": "Observation: " + f"result {i} " * 150}]
    return msgs


def test_budget_leaves_a_prompt_that_fits_untouched(registry: Any) -> None:
    msgs = _agent_messages(registry)
    out, report = fit_messages(CountingBackend(100_000), msgs, max_new_tokens=256)
    assert out == msgs and report is not None and report.actions == [] and report.before == report.after


def test_budget_trims_in_order_and_keeps_the_request_and_latest_step(registry: Any) -> None:
    msgs = _long_turn(registry)
    backend = CountingBackend(10_000)
    full = backend.count_tokens(msgs)
    for window in (full + 256 + 32 - 200, full // 2, 1400):
        out, report = fit_messages(CountingBackend(window), msgs, max_new_tokens=256)
        assert report is not None and report.after <= window - 256 - 32 < report.before
        assert out[0] == msgs[0]  # the system prompt is kept whole
        requests = [m for m in out if m["role"] == "user" and m["content"].startswith("Request: " + HEADLINE)]
        assert requests  # the real request is kept
        assert out[-2]["content"] == msgs[-2]["content"]  # the latest step
        assert out[-1]["content"].startswith("Observation: result 3")
    # the first actions, in order
    _, small = fit_messages(CountingBackend(full + 256 + 32 - 200), msgs, max_new_tokens=256)
    assert small.actions == ["capped older observations"]
    _, tight = fit_messages(CountingBackend(1400), msgs, max_new_tokens=256)
    assert tight.actions[0] == "capped older observations" and "dropped a few-shot example" in tight.actions


def test_budget_that_cannot_fit_is_one_clear_config_error(registry: Any) -> None:
    with pytest.raises(LLMUnavailable, match="context holds 300") as info:
        fit_messages(CountingBackend(300), _long_turn(registry), max_new_tokens=256)
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)


def test_compact_tool_schemas_keep_names_types_and_required(registry: Any) -> None:
    from synthehr.agent.tooling import openai_tool_schemas

    full = openai_tool_schemas(registry)
    small = compact_tools(full)
    assert len(json.dumps(small)) < 0.7 * len(json.dumps(full))
    for a, b in zip(full, small):
        pa, pb = a["function"]["parameters"], b["function"]["parameters"]
        assert a["function"]["name"] == b["function"]["name"]
        assert set(pa.get("properties", {})) == set(pb.get("properties", {}))
        assert pa.get("required") == pb.get("required")
        assert '"title"' not in json.dumps(pb) or "title" in pb.get("properties", {})
    gen = next(t for t in small if t["function"]["name"] == "generate_cohort")["function"]["parameters"]
    assert gen["properties"]["n"]["type"] == "integer" and gen["properties"]["population"]["type"] == "string"


def test_native_request_follows_the_step_grammar(registry: Any) -> None:
    tools = compact_tools([{"type": "function", "function": {"name": n, "description": n, "parameters": {}}}
                           for n in registry.names])
    names = lambda ts: [t["function"]["name"] for t in ts]  # noqa: E731
    assert native_request(tools, None) == (tools, "auto")
    must_act, choice = native_request(tools, build_step_grammar(registry, tools=["cohort_stats", "generate_cohort"],
                                                                allow_final=False))
    assert names(must_act) == ["generate_cohort", "cohort_stats"]
    assert choice == {"type": "function", "function": {"name": "generate_cohort"}}
    assert native_request(tools, build_step_grammar(registry, allow_actions=False)) == ([], None)
    either, choice = native_request(tools, build_step_grammar(registry))
    assert names(either) == registry.names and choice == "auto"


# ---- the agent end to end through transformers on a folder-based LLaMA -------------------------------
def test_agent_runs_end_to_end_through_transformers_on_a_llama_folder(sp_llama_dir: Path, deps: Any) -> None:
    """The real loop, router, grounding and budget over the tiny LLaMA (window 1,024 tokens: the budget must
    trim every step), with the recording tools of tests/test_agent.py (the model's planning, not the DP-GAN)."""
    from synthehr.agent.loop import run_turn
    from tests.test_agent import Recorder, make_registry

    llm = create_backend(LLMSettings(backend="transformers", model=str(sp_llama_dir), n_ctx=1024, max_new_tokens=96))
    assert llm.context_window == 1024
    seen: list[int] = []
    real = llm.generate

    def measured(messages: list[dict[str, str]], **kw: Any) -> str:
        seen.append(llm.count_tokens(messages))
        return real(messages, **kw)

    llm.generate = measured  # type: ignore[method-assign]
    rec = Recorder()
    result = run_turn(deps, llm, HEADLINE, registry=make_registry(rec))
    assert seen and max(seen) <= 1024 - 96 - 32, seen
    gen = [args for tool, args in rec.calls if tool == "generate_cohort"]
    assert gen, (result.steps, result.answer)
    assert gen[0]["n"] == 2000 and "diabetes" in gen[0]["condition"].lower()
    assert result.answer and any(s.get("ok") for s in result.steps)
