"""`synthehr tools run NAME ...`: every tool's command is made from its spec (args model), for built-in tools,
a tool added in one module and a third-party entry-point tool alike; user errors are one line, exit 2."""

from __future__ import annotations

import json
from typing import Any

import pytest

from synthehr.agent.cli import tool_run
from synthehr.agent.cli.main import main
from synthehr.tools.registry import default_registry
from tests import _new_tool
from tests.test_surface import _fake_distribution


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, workspace_dir: Any) -> Any:
    monkeypatch.setenv("SYNTHEHR_HOME", str(workspace_dir))
    return workspace_dir


@pytest.fixture
def with_new_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = default_registry()
    registry.add(_new_tool.SPEC)  # the one registry line
    monkeypatch.setattr(tool_run, "load_registry", lambda: registry)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = 0
    try:
        main(["tools", "run", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_options_come_from_the_args_model():
    registry = default_registry()
    export = tool_run.build_parser(registry.get("export_dataset"))
    text = export.format_help()
    assert "--format {fhir-ndjson,fhir-bundle}" in text  # choices from the Literal
    assert "FHIR NDJSON or one transaction Bundle" in text  # help from the Field description
    args, as_json, session = tool_run.parse_tool_args(registry.get("export_dataset"),
                                                      ["--format", "fhir-bundle", "--json", "--session", "s1"])
    assert args == {"format": "fhir-bundle"} and as_json and session == "s1"  # unset fields are left out

    gen = registry.get("generate_cohort")
    args, _, _ = tool_run.parse_tool_args(gen, ["--condition", "type 2 diabetes", "--n", "500", "--observations", "20",
                                                "--filters", "age_years>=65", "--filters", "hba1c_pct>=9",
                                                "--proportions", '{"sex=female": 0.4}', "--epsilon", "1.5"])
    assert args == {"condition": "type 2 diabetes", "n": 500, "observations": 20,
                    "filters": ["age_years>=65", "hba1c_pct>=9"], "proportions": {"sex=female": 0.4}, "epsilon": 1.5}
    args, _, _ = tool_run.parse_tool_args(gen, ["--condition", "copd", "--observations", "fev1", "bmi"])
    assert args["observations"] == ["fev1", "bmi"]
    gen.args_model.model_validate(args)
    stats, _, _ = tool_run.parse_tool_args(registry.get("cohort_stats"), ["--columns", "7", "bmi"])
    assert stats == {"columns": ["7", "bmi"]}  # a list of text stays text


def test_a_required_argument_is_required():
    parser = tool_run.build_parser(default_registry().get("explain_provenance"))
    from synthehr.errors import ToolInputError

    with pytest.raises(ToolInputError, match="required: --question"):
        parser.parse_args([])


def test_run_a_built_in_tool_as_json(home, capsys):
    code, out, _ = run_cli(capsys, "privacy_budget", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["tool"] == "privacy_budget" and data["args"] == {}
    assert data["data"]["sources"][0]["source"] == "nhanes-2017-2018" and "spent epsilon 0" in data["text"]


@pytest.mark.parametrize("argv, message", [
    (["export_dataset", "--format", "xml"], "invalid choice: 'xml' (choose from 'fhir-ndjson', 'fhir-bundle')"),
    (["explain_provenance"], "the following arguments are required: --question"),
    (["explain_provenance", "--question", "x", "--k", "many"], "Invalid arguments for explain_provenance: 'k'"),
    (["no_such_tool"], "unknown tool 'no_such_tool'; valid tools: generate_cohort"),
    (["cohort_stats"], "no data set has been generated yet"),
    (["generate_cohort", "--condition", "type 2 diabetes", "--n", "5000000"], "at most 100,000"),
])
def test_user_errors_are_one_line_and_exit_2(home, capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]  # one line (after the "doing ..." line)
    assert message in line and err.strip().endswith(line) and "Traceback" not in err


def test_a_tool_added_in_one_module_has_its_command(home, capsys, with_new_tool):
    code, out, err = run_cli(capsys, "hba1c_units", "--percent", "7.5")
    assert code == 0, err
    assert "HbA1c 7.5 % = 58 mmol/mol (IFCC)." in out
    assert "sources: NGSP: IFCC-NGSP master equation <https://ngsp.org/ifccngsp.asp>" in out
    assert "Converting HbA1c 7.5% to IFCC mmol/mol." in err  # the spec's describe line, before the call
    code, out, _ = run_cli(capsys, "hba1c_units", "--percent", "9", "--json")
    data = json.loads(out)
    assert data["data"]["mmol_mol"] == 75 and data["figures"][0]["value"] == 75
    code, _, err = run_cli(capsys, "hba1c_units", "--percent", "25")
    assert code == 2 and "outside 3-20 %" in err  # the tool's own ToolInputError, one line
    code, out, _ = run_cli(capsys, "hba1c_units", "--help")
    assert code == 0 and "--percent NUMBER" in out and "HbA1c in NGSP percent" in out


def test_an_entry_point_tool_has_its_command(home, capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_fake_distribution(tmp_path / "site")))
    code, out, err = run_cli(capsys, "bmi_calculator", "--weight-kg", "81", "--height-cm", "180")
    assert code == 0, err
    assert out.strip() == "BMI 25.0 kg/m2"
    code, _, err = run_cli(capsys, "bmi_calculator", "--weight-kg", "81")
    assert code == 2 and "required: --height-cm" in err


def test_a_tool_writing_files_lists_them(home, capsys, with_new_tool, workspace_dir):
    code, out, err = run_cli(capsys, "hba1c_units", "--percent", "7.5", "--chart", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["args"] == {"percent": 7.5, "chart": True}
    assert [f.rsplit("/", 1)[-1] for f in data["files"]] == ["hba1c-7.5.csv", "hba1c-7.5.svg"]
    assert data["plots"] == [data["files"][1]]
    assert (workspace_dir / "datasets" / "hba1c-units" / "hba1c-7.5.csv").read_text().endswith("7.5,58\n")


@pytest.mark.parametrize("spec", list(default_registry()) + [_new_tool.SPEC], ids=lambda s: s.name)
def test_every_tool_has_a_command_with_an_option_per_argument(spec):
    parser = tool_run.build_parser(spec)
    text = parser.format_help()
    for field, info in spec.args_model.model_fields.items():
        assert tool_run.option_name(field) in text
        if info.description:
            assert " ".join(info.description.split())[:20] in " ".join(text.split())
    required = [f for f, i in spec.args_model.model_fields.items() if i.is_required()]
    from synthehr.errors import ToolInputError

    if required:
        with pytest.raises(ToolInputError, match="required"):
            parser.parse_args([])
    # the few-shot arguments, written as options, parse back to the same validated arguments
    few = (spec.few_shot or {}).get("args")
    if few:
        argv: list[str] = []
        for k, v in few.items():
            values = v if isinstance(v, list) else [v]
            argv += [tool_run.option_name(k), *[x if isinstance(x, str) else json.dumps(x) for x in values]]
        args, _, _ = tool_run.parse_tool_args(spec, argv)
        assert spec.args_model.model_validate(args) == spec.args_model.model_validate(few)
