"""Custodian reports: the quality report on real records is marked, stored under the model, and shown
(synthehr report, the tool's answer, the data card) only when privacy.custodian_reports allows it.
The shareable card carries fidelity against DP-released frequencies instead.

Made-up records only (tests/_dpgan_fixture.py, tests/test_quality.py populations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthehr.configs.settings import load_settings
from synthehr.tools.base import ToolInputError
from synthehr.tools.deps import build_deps
from synthehr.tools.engines.quality import (
    CUSTODIAN_WARNING,
    build_quality_report,
    custodian_allowed,
    dp_fidelity,
    report_for,
    split_holdout,
)
from synthehr.tools.store.workspace import now_iso
from tests._dpgan_fixture import FIXTURE_SCHEMA, fast_settings, fixture_frame
from tests.test_quality import PRIVACY, SCHEMA, population


def _deps(tmp_path: Path, **env: str):
    return build_deps(settings=load_settings(env={"SYNTHEHR_HOME": str(tmp_path / "ws"), **env}))


def _model(deps) -> None:  # noqa: ANN001
    train, holdout = split_holdout(population(300, 8), 0.5, seed=1)
    mdir = deps.workspace.models_dir / "m-c"
    build_quality_report(train, holdout, population(200, 9), SCHEMA, "diabetes", PRIVACY, mdir, plots=False)
    deps.workspace.insert("models", {"id": "m-c", "source": "toy-source", "created_at": now_iso(), "path": str(mdir),
                                     "epsilon": 1.0, "delta": 1e-5, "accountant": "prv", "seed": 1})


def test_who_is_the_custodian_resolves_per_source(tmp_path: Path) -> None:
    deps = _deps(tmp_path)
    assert deps.settings.privacy.custodian_reports is None
    assert custodian_allowed(deps, "nhanes-2017-2018") is True  # built-in public source
    assert custodian_allowed(deps, "toy-source") is False  # a user source (or unknown)
    assert custodian_allowed(_deps(tmp_path, SYNTHEHR_PRIVACY__CUSTODIAN_REPORTS="false"), "nhanes-2017-2018") is False
    assert custodian_allowed(_deps(tmp_path, SYNTHEHR_PRIVACY__CUSTODIAN_REPORTS="true"), "toy-source") is True


def test_report_is_marked_and_refused_to_a_non_custodian(tmp_path: Path) -> None:
    deps = _deps(tmp_path)
    _model(deps)
    mdir = deps.workspace.models_dir / "m-c"
    rep = json.loads((mdir / "quality.json").read_text())
    assert rep["kind"] == "custodian report" and rep["warning"] == CUSTODIAN_WARNING
    assert CUSTODIAN_WARNING in (mdir / "quality.md").read_text().split("\n## ")[0]
    with pytest.raises(ToolInputError, match="custodian report.*privacy.custodian_reports: true"):
        report_for(deps, "m-c")
    deps.settings.privacy.custodian_reports = True
    out = report_for(deps, "m-c")
    assert out["kind"] == "custodian report" and out["warning"] == CUSTODIAN_WARNING


def test_cli_report_says_custodian_and_refuses(tmp_path: Path) -> None:
    deps = _deps(tmp_path)
    _model(deps)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHEHR_")}
    env.update(SYNTHEHR_HOME=str(tmp_path / "ws"), COLUMNS="200")
    cmd = [sys.executable, "-m", "synthehr", "report", "m-c"]
    no = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert no.returncode == 2 and "custodian report" in no.stderr and "Traceback" not in no.stderr
    assert "membership-inference" not in no.stdout + no.stderr
    yes = subprocess.run(cmd, capture_output=True, text=True, env={**env, "SYNTHEHR_PRIVACY__CUSTODIAN_REPORTS": "true"},
                         timeout=120)
    assert yes.returncode == 0, yes.stderr
    assert "Custodian report of model m-c" in yes.stdout and "non-private statistics" in yes.stdout


@pytest.fixture(scope="module")
def trained():
    from synthehr.tools.engines.dpgan import train_dpgan

    return train_dpgan(fixture_frame(400), FIXTURE_SCHEMA, target_epsilon=2.0, target_delta=1e-5,
                       conditions=["diabetes", "sex"], seed=1, settings=fast_settings())


def test_dp_fidelity_compares_with_the_dp_histogram(trained) -> None:  # noqa: ANN001
    syn = trained.sample(2000, seed=3)
    fid = dp_fidelity(trained, syn)
    assert set(fid["columns"]) == {"diabetes", "sex"} and "no real record" in fid["privacy_cost"]
    for v in fid["columns"].values():
        assert v["scored"] and 0.0 <= v["tvd_complement"] <= 1.0
        assert sum(v["dp_reference_share"].values()) == pytest.approx(1.0, abs=1e-3)
    # The sampler draws conditions from the DP histogram (then weights records to the DP tables, which
    # share its margins), so an unfiltered sample is close to it.
    assert fid["mean_tvd_complement"] > 0.85
    # A cohort fixed on diabetes: that column is not scored, sex is compared within the diabetes = 1 cells.
    coh = trained.sample(500, seed=4, fixed={"diabetes": 1})
    fid2 = dp_fidelity(trained, coh, fixed={"diabetes": 1}, proportions={"sex=female": 0.4})
    assert fid2["columns"]["diabetes"]["scored"] is False and "fixed" in fid2["columns"]["diabetes"]["reason"]
    assert fid2["columns"]["sex"]["scored"] is False and "proportions" in fid2["columns"]["sex"]["reason"]
    fid3 = dp_fidelity(trained, coh, fixed={"diabetes": 1})
    assert fid3["columns"]["sex"]["scored"] is True
    # A lopsided sample scores lower than the model's own sample.
    lop = syn.copy()
    lop["sex"] = "female"
    assert dp_fidelity(trained, lop)["columns"]["sex"]["tvd_complement"] < fid["columns"]["sex"]["tvd_complement"]


def _fake_report_hook(model, train, holdout, schema, conds, model_dir):  # noqa: ANN001, ANN202
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / "quality.json").write_text(json.dumps({"summary": {"mia_auc": 0.713579}, "flags": []}))
    return {"dir": str(model_dir), "flags": ["membership-inference AUC 0.713579 is above 0.6"], "files": []}


@pytest.mark.parametrize("custodian", [False, True])
def test_card_and_answer_hold_only_dp_facts_unless_custodian(tmp_path: Path, monkeypatch, custodian: bool) -> None:  # noqa: ANN001
    import synthehr.tools.train_generator as tg
    from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort
    from tests.test_train_generate import FAST, SRC, make_deps

    monkeypatch.setattr(tg, "_quality_hook", _fake_report_hook)
    env = {"SYNTHEHR_PRIVACY__CUSTODIAN_REPORTS": "true"} if custodian else {}
    deps = make_deps(tmp_path, **env)
    res = generate_cohort(deps, GenerateCohortArgs(condition="Type 2 Diabetes", n=200, source=SRC, seed=7))
    files = res.data["files"]
    card_text = Path(files["card_json"]).read_text() + Path(files["card_md"]).read_text()
    card = json.loads(Path(files["card_json"]).read_text())
    assert card["fidelity"]["mean_tvd_complement"] is None or 0 <= card["fidelity"]["mean_tvd_complement"] <= 1
    assert card["fidelity"]["columns"]["diabetes"]["scored"] is False  # fixed by the cohort definition
    assert "stays spent" in card["privacy_ledger"]["note"] and card["privacy_ledger"]["spent_epsilon"] > 0
    assert "stays spent" in Path(files["card_md"]).read_text()
    assert card["custodian_report"]["shown"] is custodian
    # Only the model folder holds the report; the data set folder holds data and the card.
    assert sorted(p.name for p in Path(res.data["dir"]).iterdir()) == ["card.json", "card.md", "data.csv", "data.parquet"]
    train_run = deps.workspace.query("SELECT result_json FROM runs WHERE kind = 'train'")[0]["result_json"]
    if custodian:
        assert "0.713579" in card_text and CUSTODIAN_WARNING in card_text and "0.713579" in train_run
    else:
        assert "0.713579" not in card_text and "0.713579" not in train_run and "0.713579" not in res.text
        assert "not the data custodian" in card_text
    assert FAST  # the fast training settings were used
