"""Every registered tool passes the same battery: schema, declared roles, examples, error type, result type.

A tool is one module plus one registry line (issue 14): what the agent needs to plan, ground, prompt and
answer lives on the tool's ToolSpec, so this battery is all a new tool has to pass.
"""

from __future__ import annotations

import json
import re
import inspect

import pytest
from pydantic import BaseModel

from synthehr.errors import UserError
from synthehr.tools.base import ToolResult, arg_roles
from synthehr.tools.registry import default_registry

# The roles grounding knows (synthehr.agent.grounding.ground_args handles each).
KNOWN_ROLES = {"n", "n_obs", "epsilon", "delta", "seed", "condition", "population", "dataset", "question", "filters",
               "age_min", "age_max", "sex", "source", "columns", "by", "thresholds", "correlation", "plot",
               "proportions"}
UNKNOWN = {"condition": "dragon pox", "dataset": "ds-20990101-000000-abcdef", "source": "no-such-source"}

SPECS = list(default_registry())


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_spec_schema_roles_and_examples(spec):
    assert re.fullmatch(r"[a-z][a-z0-9_]{2,40}", spec.name)
    assert len(spec.description.split()) >= 8
    model = spec.args_model
    assert issubclass(model, BaseModel) and model.model_config.get("extra") == "forbid"
    json.dumps(model.model_json_schema())  # a JSON schema the LLM layer can send
    roles = arg_roles(model)
    assert roles, "declare each grounded field's role: Field(json_schema_extra={'role': ...})"
    assert set(roles.values()) <= KNOWN_ROLES, set(roles.values()) - KNOWN_ROLES
    assert len(spec.examples) >= 2 and len(spec.router_examples) >= 2
    assert len(set(spec.examples) | set(spec.router_examples)) == len(spec.examples) + len(
        set(spec.router_examples) - set(spec.examples))
    for pattern in (spec.router_cues, spec.router_requires):
        if pattern:
            re.compile(pattern)
    if spec.few_shot is not None:
        assert {"request", "thought", "args", "observation", "final"} <= set(spec.few_shot)
        model.model_validate(spec.few_shot["args"])  # the prompt never teaches arguments the tool refuses
    assert spec.describe is not None, "say what the tool does before it runs (a thought in the clinician's words)"
    assert inspect.signature(spec.func).return_annotation in (ToolResult, "ToolResult")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_unknown_references_raise_the_one_user_error_root(spec, deps):
    roles = {r: k for k, r in arg_roles(spec.args_model).items()}
    args = dict((spec.few_shot or {}).get("args") or {})
    for field, info in spec.args_model.model_fields.items():
        if info.is_required() and field not in args:
            args[field] = 1.0 if roles.get("epsilon") == field else "x"
    target = next((r for r in ("condition", "dataset", "source") if r in roles), None)
    if target is None:
        pytest.skip("no reference argument")
    args[roles[target]] = UNKNOWN[target]
    with pytest.raises(UserError) as err:
        spec.run(deps, args)
    assert "valid" in str(err.value).lower() or "use " in str(err.value).lower() or "registered" in str(err.value)


def test_a_tool_result_is_typed(deps):
    """privacy_budget runs on an empty workspace: its result carries the typed fields the writer reads."""
    res = default_registry().get("privacy_budget").run(deps, {})
    assert isinstance(res, ToolResult) and res.summary and res.figures
    typed = res.typed()
    assert set(typed) == {"summary", "statements", "figures", "plots", "sources", "missing", "privacy"}
    assert all({"label", "value", "unit"} <= set(f) for f in typed["figures"])


def test_describe_says_what_will_happen(deps):
    reg = default_registry()
    gen = reg.get("generate_cohort")
    args = gen.args_model.model_validate({"condition": "type 2 diabetes", "n": 2000, "population": "US"})
    text = gen.describe(deps, args)
    assert text.startswith("Generating 2,000 patients with Type 2 diabetes from NHANES")
    assert "no trained model yet, so training one first" in text and "about a minute" in text
    prov = reg.get("explain_provenance")
    assert "knowledge base" in prov.describe(deps, prov.args_model.model_validate({"question": "who runs NHANES?"}))
