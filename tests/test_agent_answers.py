"""The answer writer and verifier (synthehr.agent.answer), tested on the bad answers quoted in issue 13.

Each bad answer a clinician saw is replayed against the tool results that produced it: the verifier must
reject it and the writer's answer (what the user then reads) must state the facts plainly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from synthehr.agent.answer import choose_answer, relative_path, repeated_sentences, verify, write_answer
from synthehr.agent.llm.base import ScriptedLLM
from synthehr.agent.loop import run_turn
from synthehr.tools.base import Figure, Missing, SourceRef, ToolResult, ToolSpec
from synthehr.tools.registry import Registry

ROOT = "/srv/ws"
DS = "ds-20261127-101500-a1b2c3"


def gen_step() -> dict[str, Any]:
    """A generate_cohort call as the loop stores it (typed result, files inside the workspace)."""
    result = ToolResult(
        text=f"Wrote 2000 synthetic Type 2 diabetes records to {ROOT}/datasets/{DS}/data.csv. Not available in "
             "nhanes-2017-2018 (not generated): Fasting plasma glucose, LDL cholesterol.",
        summary="I generated 2,000 synthetic patients with Type 2 diabetes from NHANES 2017-2018, with 12 "
                "observations besides age, sex and race/ethnicity.",
        statements=["Cohort definition (American Diabetes Association Standards of Care): adults told by a doctor "
                    "they have diabetes, or HbA1c of 6.5% or more."],
        figures=[Figure("mean age", 61.2, "years"), Figure("women", 47.9, "%"), Figure("mean HbA1c", 6.75, "%")],
        missing=[Missing("Fasting plasma glucose", "NHANES 2017-2018 does not measure it"),
                 Missing("LDL cholesterol", "NHANES 2017-2018 does not measure it")],
        privacy="The generator was trained with differential privacy (epsilon 1, delta 1e-06), so no real patient "
                "can be singled out from these records.",
        sources=[SourceRef("NHANES 2017-2018", "https://wwwn.cdc.gov/nchs/nhanes/"),
                 SourceRef("American Diabetes Association Standards of Care")],
    )
    files = [f"{ROOT}/datasets/{DS}/{n}" for n in ("data.csv", "data.parquet", "card.json", "card.md")]
    return {"tool": "generate_cohort", "ok": True, "args": {"condition": "Type 2 diabetes", "n": 2000},
            "observation": result.text, "files": files, "data": {"dataset_id": DS, "n_rows": 2000},
            "result": json.loads(json.dumps(result.typed()))}


def stats_step() -> dict[str, Any]:
    result = ToolResult(text=f"Cohort {DS}: 2000 rows. hba1c_pct mean 6.75% (SD 1.1), median 6.6 (8 missing); "
                             "HbA1c >= 9 %: 8.0%.",
                        summary=f"Statistics of the 2,000 synthetic patients in {DS} (HbA1c).",
                        figures=[Figure("mean HbA1c", 6.75, "%"), Figure("SD of HbA1c", 1.1, "%"),
                                 Figure("patients without a HbA1c value", 8, "patients"),
                                 Figure("patients with HbA1c >= 9 %", 8.0, "%")])
    return {"tool": "cohort_stats", "ok": True, "args": {"dataset": "last", "columns": ["hba1c_pct"]},
            "observation": result.text, "files": [], "data": {"dataset_id": DS},
            "result": json.loads(json.dumps(result.typed()))}


def prov_step(found: bool = True) -> dict[str, Any]:
    sources = [SourceRef("Lineage of " + DS, "", "sources and guidelines", 1,
                         [f"{DS} was sampled from a generator trained on NHANES 2017-2018 with epsilon 1."]),
               SourceRef("American Diabetes Association Standards of Care", "https://diabetesjournals.org/care", "Diagnosis", 2,
                         ["Diabetes is diagnosed at an HbA1c of 6.5% or higher."]),
               SourceRef("2017 ACC/AHA blood pressure guideline", "https://www.ahajournals.org", "Stages", 3,
                         ["Stage 1 hypertension is a blood pressure of 130-139/80-89 mmHg."])] if found else []
    result = ToolResult(text="Passages ...", summary="From the knowledge base:" if found else
                        "The knowledge base has no passage that answers this question, so I cannot answer it from "
                        "cited sources.", sources=sources)
    return {"tool": "explain_provenance", "ok": True, "args": {"question": "q"}, "observation": result.text,
            "files": [], "data": {}, "result": json.loads(json.dumps(result.typed()))}


# ---- the bad answers of issue 13 --------------------------------------------------------------------
def test_headline_answer_reads_as_success_with_n_definition_missing_privacy_and_relative_files():
    bad = ("The dataset is not available in nhanes-2017-2018 (not generated): Fasting plasma glucose, LDL. "
           "The dataset is not available in nhanes-2017-2018 (not generated): Fasting plasma glucose, LDL.")
    problems = verify(bad, [gen_step()], request="generate 2000 Type 2 diabetes patients")
    assert any("failure" in p for p in problems) and any("repeats" in p for p in problems)
    answer, rejected = choose_answer(bad, [gen_step()], model_phrases=True, root=ROOT)
    assert rejected and answer != bad
    assert "2,000 synthetic patients with Type 2 diabetes" in answer
    assert "HbA1c of 6.5% or more" in answer and "American Diabetes Association" in answer
    assert "mean HbA1c 6.75%" in answer and "mean age 61.2 years" in answer
    assert "Not included because NHANES 2017-2018 does not measure them: Fasting plasma glucose, LDL cholesterol" in answer
    assert "not available" not in answer and "not generated" not in answer
    assert "Privacy: " in answer and answer.count("epsilon") == 1
    assert f"datasets/{DS}/data.csv" in answer and ROOT not in answer
    assert verify(answer, [gen_step()]) == []  # the writer passes its own verifier
    assert not repeated_sentences(answer)


def test_web_quoted_tool_dump_is_never_the_answer():
    bad = "Here is what the tools reported (tool output, quoted):\n- generate_cohort: Wrote 2000 synthetic ..."
    assert "quotes raw tool output" in verify(bad, [gen_step()])
    answer = write_answer([gen_step()], root=ROOT)
    assert "tool output" not in answer and "generate_cohort" not in answer


def test_make_them_older_is_not_reported_as_a_failure():
    bad = "The dataset is not available in nhanes-2017-2018 (not generated)."
    problems = verify(bad, [gen_step()], request="make them older")
    assert problems and "failure" in problems[0]


def test_mean_hba1c_answer_with_invented_numbers_falls_back_to_the_figures():
    bad = "The mean HbA1c is 6.75 %, the 6.59% is 4.6%, which is the highest in the cohort."
    problems = verify(bad, [stats_step()], request="what is their mean HbA1c?")
    assert problems == ["numbers no tool reported: 4.6, 6.59"]
    answer, rejected = choose_answer(bad, [stats_step()], model_phrases=True, request="what is their mean HbA1c?")
    assert rejected and "mean HbA1c 6.75%" in answer and "6.59" not in answer


@pytest.mark.parametrize("bad", ["the 2 missing values are 7.56% and 10.4%", "80.7 % of them are below 18 %."])
def test_numbers_no_tool_reported_are_caught(bad):
    assert any("numbers no tool reported" in p for p in verify(bad, [stats_step()]))


def test_a_faithful_model_answer_is_kept_and_rounding_is_allowed():
    good = "Their mean HbA1c is 6.8% (SD 1.1); 8% have an HbA1c of 9% or more."
    answer, problems = choose_answer(good, [stats_step()], model_phrases=True)
    assert problems == [] and answer == good
    # The embedded model never phrases the answer: the writer does.
    written, _ = choose_answer(good, [stats_step()], model_phrases=False)
    assert written.startswith("Statistics of the 2,000 synthetic patients")


def test_provenance_answer_cites_and_names_every_source_once():
    bad = ("It is based on NHANES 2017-2018. The data set was based on the data set was based on the data set was "
           "based on the data set was based on the data set was based on.")
    problems = verify(bad, [prov_step()])
    assert any("repeats" in p for p in problems) and any("citations" in p for p in problems)
    answer = write_answer([prov_step()], root=ROOT)
    assert "[1]" in answer and "[2]" in answer and "[3]" in answer
    assert "American Diabetes Association Standards of Care" in answer and "ACC/AHA" in answer
    assert "NHANES 2017-2018" in answer and not repeated_sentences(answer)
    assert verify(answer, [prov_step()]) == []


def test_nothing_retrieved_says_so():
    answer = write_answer([prov_step(found=False)])
    assert "knowledge base has no passage" in answer and "[1]" not in answer


def test_unknown_data_set_id_is_caught():
    assert any("identifiers" in p for p in verify(f"Saved as ds-20260101-000000-ffffff.", [gen_step()]))


def test_relative_path():
    assert relative_path("/srv/ws/datasets/x/data.csv", "/srv/ws") == "datasets/x/data.csv"
    assert relative_path("/elsewhere/x.csv", "/srv/ws") == "/elsewhere/x.csv"


def test_results_after_an_earlier_failure_do_not_claim_failure():
    failed = {"tool": "generate_cohort", "ok": False, "error": "arguments", "observation": "unknown condition"}
    answer = write_answer([failed, gen_step()], root=ROOT)
    assert "could not" not in answer and answer.startswith("I generated 2,000")


# ---- through the loop ------------------------------------------------------------------------------
def test_loop_uses_the_writer_for_the_embedded_model_and_thoughts_say_what_happens(deps):
    """A scripted model named 'embedded' (the default backend) never phrases the answer; each step's thought
    says what the tool will do, never "I can answer now"."""
    from pydantic import BaseModel, ConfigDict, Field

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")
        dataset: str = Field("last", json_schema_extra={"role": "dataset"})

    def run(d: Any, a: Args) -> ToolResult:
        return ToolResult(text="mean HbA1c 7.1", summary="Statistics of the 40 synthetic patients.",
                          figures=[Figure("mean HbA1c", 7.1, "%")])

    spec = ToolSpec("cohort_stats", "Statistics of a data set.", Args, run,
                    describe=lambda d, a: f"Computing statistics of {a.dataset}.")
    llm = ScriptedLLM([
        'Thought: I can answer now.\nAction: cohort_stats\nAction Input: {"dataset": "last"}',
        "Thought: I can answer now.\nFinal Answer: The mean HbA1c is 9.9 % in 77 patients.",
    ], name="embedded")
    events: list[Any] = []
    result = run_turn(deps, llm, "what is their mean HbA1c?", registry=Registry([spec]), router=None,
                      on_event=events.append)
    thoughts = [e.text for e in events if e.kind == "thought"]
    assert thoughts[0] == "Computing statistics of last." and "I can answer now." not in thoughts
    assert result.answer == "Statistics of the 40 synthetic patients.\n\nKey figures: mean HbA1c 7.1%."
    assert result.composed
