"""Evaluation cases follow from the specs: a tool added in one module brings its own cases (its few-shot line with
the expected arguments, and its examples), run by the same harness as the cases files."""

from __future__ import annotations

from synthehr.agent.evaluation import run_eval, spec_cases
from synthehr.agent.llm.base import ScriptedLLM
from synthehr.tools.registry import default_registry
from tests import _new_tool


def registry_with_new_tool():
    registry = default_registry()
    registry.add(_new_tool.SPEC)  # the one registry line
    return registry


def test_the_new_tools_examples_become_cases():
    cases = {c.id: c for c in spec_cases(registry_with_new_tool())}
    few = cases["spec-hba1c_units-few-shot"]
    assert few.request == "HbA1c 9 % in mmol/mol?" and few.expect_tools == ["hba1c_units"]
    assert few.expect_args == {"hba1c_units": {"percent": 9.0}} and few.tags == ["spec", "hba1c_units"]
    assert [cases[f"spec-hba1c_units-{i}"].request for i in (1, 2)] == list(_new_tool.SPEC.examples)
    assert all(cases[f"spec-hba1c_units-{i}"].expect_tools == ["hba1c_units"] for i in (1, 2))


def test_built_in_specs_bring_cases_with_history_where_a_data_set_is_read():
    registry = default_registry()
    cases = {c.id: c for c in spec_cases(registry)}
    for spec in registry:  # every example of every tool is a case
        assert sum(1 for c in cases.values() if c.expect_tools == [spec.name] and c.request in spec.examples) == len(
            set(spec.examples))
    stats = cases["spec-cohort_stats-few-shot"]
    assert stats.expect_args == {"cohort_stats": {"dataset": "last", "columns": ["bmi_kg_m2"]}}
    assert stats.history and stats.history[0]["tool"] == "generate_cohort"  # "those patients" needs a cohort
    assert cases["spec-explain_provenance-few-shot"].expect_args["explain_provenance"]["question"] == "*"
    assert cases["spec-generate_cohort-few-shot"].history == []


def _one(registry, case_id):
    return [c for c in spec_cases(registry) if c.id == case_id]


def test_the_new_tools_case_runs_through_the_harness(settings):
    registry = registry_with_new_tool()
    cases = _one(registry, "spec-hba1c_units-few-shot")
    good = ScriptedLLM(['Thought: convert.\nAction: hba1c_units\nAction Input: {"percent": 9}',
                        "Thought: done.\nFinal Answer: 75 mmol/mol."], name="embedded")
    report = run_eval(cases, settings, good, registry, router=None)
    (case,) = report["cases"]
    assert case["called_tools"] == ["hba1c_units"] and case["tool_ok"] and case["args_ok"]

    wrong_tool = ScriptedLLM(['Thought: budget.\nAction: privacy_budget\nAction Input: {}',
                              "Thought: done.\nFinal Answer: 75 mmol/mol."], name="embedded")
    report = run_eval(cases, settings, wrong_tool, registry, router=None)
    assert report["summary"]["tool_accuracy"] == 0.0 and report["cases"][0]["args_mismatch"] == ["hba1c_units: not called"]


def test_eval_agent_offers_spec_cases(capsys, monkeypatch, workspace_dir):
    from synthehr.agent.cli.main import main

    monkeypatch.setenv("SYNTHEHR_HOME", str(workspace_dir))
    try:
        main(["eval", "agent", "--help"])
    except SystemExit as exc:
        assert not exc.code
    assert "--spec-cases" in capsys.readouterr().out


def test_eval_agent_runs_a_new_tools_spec_case_without_a_cases_file_edit(capsys, monkeypatch, workspace_dir):
    import json

    from synthehr.agent import plugins
    from synthehr.agent.cli import ask
    from synthehr.agent.cli.main import main

    monkeypatch.setenv("SYNTHEHR_HOME", str(workspace_dir))
    registry = registry_with_new_tool()
    monkeypatch.setattr(plugins, "registry_with_plugins", lambda *a, **k: (registry, []))
    llm = ScriptedLLM(['Thought: convert.\nAction: hba1c_units\nAction Input: {"percent": 9}',
                       "Thought: done.\nFinal Answer: 75 mmol/mol."], name="embedded")
    monkeypatch.setattr(ask, "_backend", lambda d, console: llm)
    main(["eval", "agent", "--spec-cases", "--only", "spec-hba1c_units-few-shot", "--no-router", "--json"])
    report = json.loads(capsys.readouterr().out)
    (case,) = report["cases"]
    assert case["id"] == "spec-hba1c_units-few-shot" and case["tool_ok"] and case["args_ok"]
    assert llm.exhausted
