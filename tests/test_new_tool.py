"""Adding a tool is one module (tests/_new_tool.py) plus one registry line: the agent plans, grounds,
prompts and answers with it from its spec alone."""

from __future__ import annotations

import json

from synthehr.agent.llm.base import ScriptedLLM
from synthehr.agent.loop import run_turn
from synthehr.agent.prompts import few_shot_messages, system_prompt
from synthehr.tools.registry import default_registry
from tests import _new_tool


def registry_with_new_tool():
    registry = default_registry()
    registry.add(_new_tool.SPEC)  # the one registry line
    return registry


def test_the_agent_calls_a_tool_defined_in_one_module(deps):
    registry = registry_with_new_tool()
    text = "\n".join(m["content"] for m in few_shot_messages(registry))
    assert "Action: hba1c_units" in text  # its few-shot line
    assert "hba1c_units: Convert an HbA1c" in system_prompt(registry, deps.settings)
    llm = ScriptedLLM([
        'Thought: convert.\nAction: hba1c_units\nAction Input: {"percent": 7.5}',
        "Thought: done.\nFinal Answer: An HbA1c of 7.5% is 58 mmol/mol.",
    ], name="embedded")
    events = []
    result = run_turn(deps, llm, "what is an HbA1c of 7.5% in mmol/mol?", registry=registry, router=None,
                      on_event=events.append)
    step = result.steps[0]
    assert step["tool"] == "hba1c_units" and step["ok"] and step["args"] == {"percent": 7.5}
    assert [e.text for e in events if e.kind == "thought"][0] == "Converting HbA1c 7.5% to IFCC mmol/mol."
    assert result.answer.startswith("An HbA1c of 7.5% is 58 mmol/mol in IFCC units.")
    assert "Based on: NGSP: IFCC-NGSP master equation" in result.answer


def test_an_invented_number_for_a_roleless_field_is_dropped_and_corrected(deps):
    """The model invents 9 % (the user wrote no number): grounding drops it, validation asks again."""
    registry = registry_with_new_tool()
    llm = ScriptedLLM([
        'Thought: convert.\nAction: hba1c_units\nAction Input: {"percent": 9}',
        "Thought: I need the value.\nFinal Answer: Which HbA1c value should I convert?",
    ], name="embedded")
    result = run_turn(deps, llm, "convert HbA1c to mmol/mol", registry=registry, router=None)
    assert result.steps[0]["ok"] is False and "percent" in result.steps[0]["observation"]


def test_the_intent_model_learns_the_new_tool_from_its_spec():
    from synthehr.agent.intent import IntentModel

    model = IntentModel(registry_with_new_tool())
    assert model.predict("please give me HbA1c 8.2 % in mmol/mol").tool == "hba1c_units"
    assert model.predict("generate 500 patients with type 2 diabetes").tool == "generate_cohort"
    json.dumps(model.predict("x").probs)
