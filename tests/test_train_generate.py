"""train_generator / generate_cohort tools, the Python API and the CLI, in a temporary workspace.

Uses a made-up fixture source (tests/_dpgan_fixture.py), never real rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests._dpgan_fixture import write_source
from synthehr.tools.base import ToolInputError
from synthehr.configs.settings import load_settings
from synthehr.tools.deps import Deps, build_deps
from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort, pick_source, resolve_profile
from synthehr.tools.train_generator import TrainGeneratorArgs, train_generator

SRC = "fixture-clinic"
FAST = {"SYNTHEHR_TRAINING__EPOCHS": "2", "SYNTHEHR_TRAINING__BATCH_SIZE": "128",
        "SYNTHEHR_TRAINING__MARGINAL_PRETRAIN_STEPS": "20"}


def make_deps(tmp_path: Path, **env: str) -> Deps:
    settings = load_settings(env={"SYNTHEHR_HOME": str(tmp_path / "ws"), **FAST, **env})
    deps = build_deps(settings=settings)
    if SRC not in deps.catalog.names():
        data, meta = write_source(tmp_path / "src", n=400)
        deps.catalog.register(data, meta)
    return deps


@pytest.fixture(autouse=True)
def _no_quality_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep these tests fast: the quality report has its own tests; here the hook only has to be called."""
    import synthehr.tools.train_generator as tg

    calls: list[dict] = []

    def fake_hook(model, train, holdout, schema, conds, model_dir):  # noqa: ANN001, ANN202
        assert len(train) + len(holdout) == 400 and len(holdout) == 80  # holdout split before training
        calls.append({"n_train": len(train)})
        return {"called": True}

    monkeypatch.setattr(tg, "_quality_hook", fake_hook)


def test_train_charges_full_target_in_two_lines_and_records_model(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    res = train_generator(deps, TrainGeneratorArgs(source=SRC, epsilon=1.0, seed=3))
    d = res.data
    assert d["epsilon"] <= 1.0 and d["target_epsilon"] == 1.0
    # The true count (320) is never published: this source declares no n_public, so the DP estimate is shown.
    assert d["rows_trained_basis"] == "DP estimate" and d["rows_trained"] % 10 == 0
    manifest = json.loads((Path(d["path"]) / "manifest.json").read_text())
    assert not {"n_train", "n_holdout", "rows_held_out"} & set(manifest["extra"]) and "rows_held_out" not in d
    # The hook ran; a user source's custodian report is withheld from the answer by default.
    assert d["delta"] < 1 / 400 and d["quality"]["shown"] is False and "called" not in d["quality"]
    charges = deps.workspace.charges(SRC)
    assert [c.mechanism for c in charges] == ["opendp-zcdp-marginals", "dp-sgd-opacus-prv"]
    assert sum(c.epsilon for c in charges) == pytest.approx(1.0)
    # The ledger's deltas add up to the stated delta; the Gaussian tables' share is on the first line.
    assert sum(c.delta for c in charges) == pytest.approx(d["delta"])
    assert charges[0].delta > 0  # the Gaussian tables spend part of delta
    assert all(c.ref == d["model_id"] for c in charges)
    row = deps.workspace.get("models", "id", d["model_id"])
    assert row is not None and row["epsilon"] <= 1.0 and json.loads(row["conditions_json"]) == ["diabetes", "sex"]
    assert (Path(row["path"]) / "generator.safetensors").is_file()
    assert deps.session.last_model == d["model_id"]
    assert "epsilon spent" in res.text and d["model_id"] in res.text


def test_overspend_refused_before_any_record_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deps = make_deps(tmp_path, SYNTHEHR_PRIVACY__SOURCE_BUDGET_EPSILON="1.5")
    train_generator(deps, TrainGeneratorArgs(source=SRC, epsilon=1.0, seed=1))
    before = deps.workspace.charges(SRC)

    def no_data(name: str) -> pd.DataFrame:
        raise AssertionError("real records were loaded although the budget was exhausted")

    monkeypatch.setattr(deps.catalog, "load", no_data)
    with pytest.raises(ToolInputError, match=r"left epsilon=0\.5"):
        train_generator(deps, TrainGeneratorArgs(source=SRC, epsilon=1.0, seed=2))
    assert deps.workspace.charges(SRC) == before


def test_limits_are_named(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, SYNTHEHR_PRIVACY__MAX_EPSILON_PER_REQUEST="2", SYNTHEHR_GENERATION__MAX_ROWS="500")
    with pytest.raises(ToolInputError, match="max_epsilon_per_request"):
        train_generator(deps, TrainGeneratorArgs(source=SRC, epsilon=3.0))
    with pytest.raises(ToolInputError, match="generation.max_rows"):
        generate_cohort(deps, GenerateCohortArgs(condition="type 2 diabetes", n=501, source=SRC))
    with pytest.raises(ToolInputError, match="registered sources"):
        train_generator(deps, TrainGeneratorArgs(source="nope", epsilon=1.0))
    with pytest.raises(ToolInputError, match="binary or categorical"):
        train_generator(deps, TrainGeneratorArgs(source=SRC, epsilon=1.0, conditions=["bmi_kg_m2"]))
    assert deps.workspace.charges(SRC) == []


def test_generate_cohort_end_to_end(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    args = GenerateCohortArgs(condition="Type 2 Diabetes", n=300, source=SRC, observations=20,
                              filters=["age_years>=40"], proportions={"sex=female": 0.4}, seed=7)
    res = generate_cohort(deps, args)
    data = res.data
    files = data["files"]
    csv = pd.read_csv(files["csv"])
    parquet = pd.read_parquet(files["parquet"])
    assert len(csv) == len(parquet) == 300
    # the cohort definition (adults; diagnosed or HbA1c >= 6.5) and the filters hold for every row
    cohort = (csv["diabetes_diagnosed"] == 1) | (csv["hba1c_pct"] >= 6.5)
    assert cohort.all() and (csv["age_years"] >= 40).all() and (csv["diabetes"] == 1).all()
    assert (csv["sex"] == "female").sum() == 120
    assert {"age_years", "sex", "race_ethnicity", "hba1c_pct", "bmi_kg_m2"} <= set(csv.columns)
    card = json.loads(Path(files["card_json"]).read_text())
    for key in ("dataset_id", "created_at", "source", "condition", "cohort", "model", "n_rows", "seed", "columns",
                "missing_observations", "files", "software", "guidelines", "hashes"):
        assert key in card, key
    assert card["n_rows"] == 300 and card["condition"]["id"] == "type-2-diabetes"
    assert card["model"]["epsilon"] <= card["model"]["target_epsilon"]
    assert {"id", "epsilon", "delta", "accountant", "target_epsilon", "seed", "epochs", "conditions"} <= set(card["model"])
    missing = {m["name"] for m in card["missing_observations"]}
    assert "fasting_plasma_glucose" in missing and "ldl_cholesterol" in missing  # said, not invented
    assert "fasting_plasma_glucose" not in csv.columns
    assert Path(files["card_md"]).read_text().startswith("# Data card")
    row = deps.workspace.get("datasets", "id", data["dataset_id"])
    assert row is not None and row["n_rows"] == 300 and row["source"] == SRC
    assert deps.session.last_dataset == data["dataset_id"] and deps.session.last_cohort["condition"] == "type-2-diabetes"
    assert "Fasting plasma glucose" in res.text and files["csv"] in res.text
    assert not any(p.name.startswith(".") for p in deps.workspace.datasets_dir.iterdir())  # no temp leftovers
    # The data card was indexed as lineage right away (a provenance question finds this run).
    assert data["dataset_id"] in deps.index.indexed_datasets()
    # A second request reuses the model: no new privacy charge.
    spent = deps.workspace.spent(SRC)
    res2 = generate_cohort(deps, GenerateCohortArgs(condition="t2d", n=50, source=SRC, seed=8))
    assert res2.data["trained_new_model"] is False and deps.workspace.spent(SRC) == spent
    assert res2.data["model_id"] == data["model_id"]


def test_unknown_condition_and_population_are_corrective(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    with pytest.raises(ToolInputError, match="valid conditions: .*type-2-diabetes"):
        generate_cohort(deps, GenerateCohortArgs(condition="dragon pox", n=10))
    with pytest.raises(ToolInputError, match="nhanes-2017-2018"):
        generate_cohort(deps, GenerateCohortArgs(condition="t2d", n=10, population="Atlantis"))
    with pytest.raises(ToolInputError, match="valid columns"):
        generate_cohort(deps, GenerateCohortArgs(condition="t2d", n=10, source=SRC, filters=["ldl>=3"]))
    assert deps.workspace.charges(SRC) == []


def test_us_population_maps_to_nhanes(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    profile = resolve_profile("type 2 diabetes")
    assert pick_source(deps, profile, "US", None) == "nhanes-2017-2018"
    assert pick_source(deps, profile, "United States", None) == "nhanes-2017-2018"
    assert pick_source(deps, profile, None, SRC) == SRC


def test_api_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from synthehr.agent.cli.main import main
    from synthehr.tools import api

    deps = make_deps(tmp_path)
    out = api.generate("type 2 diabetes", n=40, source=SRC, seed=1, deps=deps)
    assert out["n_rows"] == 40 and Path(out["files"]["csv"]).is_file()
    monkeypatch.setenv("SYNTHEHR_HOME", str(tmp_path / "ws"))
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    main(["generate", "--condition", "type 2 diabetes", "-n", "30", "--source", SRC, "--filter", "age_years>=50",
          "--proportion", "sex=female:0.5", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["n_rows"] == 30 and len(pd.read_csv(data["files"]["csv"])) == 30
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--condition", "dragon pox", "-n", "5"])
    assert exc.value.code == 2
    assert "valid conditions" in capsys.readouterr().err
