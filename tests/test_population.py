"""Population targets (issue 15): cited tables, derivation, sampling to targets, card, refusals.

The sampling tests use a made-up fixture source (tests/_dpgan_fixture.py records with NHANES race
labels), never real rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from synthehr.tools.base import ToolInputError
from synthehr.tools.engines import population as pe
from tests._dpgan_fixture import FIXTURE_COLUMNS, FIXTURE_META, fixture_frame

KNOWLEDGE = Path(__file__).resolve().parents[1] / "knowledge"
RACES = ["Mexican American", "Other Hispanic", "Non-Hispanic White", "Non-Hispanic Black", "Non-Hispanic Asian",
         "Other or multiracial"]
SRC = "fixture-us-clinic"
EPS = 4.0  # the fixture model's budget: little enough noise for 3,000 made-up rows to teach every group
HEADLINE = ("generate 2000 Type 2 diabetes patients EHR data with 20 important diabetes observations "
            "based on the US population")
FAST = {"SYNTHEHR_TRAINING__EPOCHS": "2", "SYNTHEHR_TRAINING__BATCH_SIZE": "128",
        "SYNTHEHR_TRAINING__MARGINAL_PRETRAIN_STEPS": "20"}


# ---- tables and derivation ----------------------------------------------------------------------
def test_tables_are_cited_and_versioned():
    tables = pe.load_tables()
    assert {"us-adults-2023", "us-diabetes-prevalence", "us-hypertension-prevalence", "us-ckd-prevalence",
            "us-copd-prevalence"} <= set(tables)
    for t in tables.values():
        assert isinstance(t["version"], int) and t["sources"]
        assert all(s["citation"] and s["url"].startswith("http") for s in t["sources"].values())
    cells = tables["us-adults-2023"]["cells_percent"]
    assert sum(sum(v) for a in cells.values() for v in a.values()) == pytest.approx(100, abs=0.05)


def test_diagnosed_diabetes_shares_reproduce_the_reference_worked_example():
    # us-population.md §4: share of adults with diagnosed diabetes, computed there by hand from C1 x D1.
    tables = pe.load_tables()
    t = pe.derive(tables["us-adults-2023"], tables["us-diabetes-prevalence"], "diagnosed")
    want = {"race_ethnicity": {"hispanic": 17.3, "nh_white": 59.8, "nh_black": 13.9, "nh_asian": 6.4, "other": 2.7},
            "age_band": {"18-44": 12.0, "45-64": 39.8, "65+": 48.1}, "sex": {"male": 54.3, "female": 45.7}}
    for dim, groups in want.items():
        for g, pct in groups.items():
            assert 100 * t.marginals[dim][g] == pytest.approx(pct, abs=0.06), (dim, g)
    assert t.checks["implied_overall_prevalence_by_race_ethnicity"] == pytest.approx(11.25, abs=0.01)


@pytest.mark.parametrize("condition", ["type-2-diabetes", "hypertension", "chronic-kidney-disease", "copd"])
def test_raked_cells_meet_every_margin(condition):
    t = pe.load_targets("US", condition)
    assert len(t.cells) == 30 and sum(t.cells.values()) == pytest.approx(1.0)
    for i, dim in enumerate(pe.DIMENSIONS):
        for g, share in t.marginals[dim].items():
            assert sum(v for k, v in t.cells.items() if k[i] == g) == pytest.approx(share, abs=1e-9)
    # The targets differ from the population's own make-up (that is the point of prevalence).
    assert t.marginals["age_band"]["65+"] > t.population_marginals["age_band"]["65+"] + 0.05


def test_type2_targets_use_total_diabetes_like_the_cohort_definition():
    t = pe.load_targets("US", "type-2-diabetes")
    assert t.measure == "total" and "undiagnosed" in t.measure_label
    assert t.sources.keys() >= {"S60", "S1"}  # Census Vintage 2023, CDC NDSR Table 1a


def test_hypertension_age_bands_are_rebanded_by_overlapping_years():
    groups = pe._groups(pe.load_tables()["us-adults-2023"])["age_band"]
    got = pe.reband({"18-39": 22.4, "40-59": 54.5, "60+": 74.5}, groups)
    assert got["18-44"] == pytest.approx((22 * 22.4 + 5 * 54.5) / 27)
    assert got["45-64"] == pytest.approx((15 * 54.5 + 5 * 74.5) / 20)
    assert got["65+"] == pytest.approx(74.5)


def test_documents_are_rendered_by_code_and_in_sync():
    rendered = pe.render_documents()
    assert len(rendered) == 5
    for name, text in rendered.items():
        path = KNOWLEDGE / "sources" / name
        assert path.is_file(), f"run python -m synthehr.tools.engines.population to write {name}"
        assert path.read_text(encoding="utf-8") == text, f"{name} is stale: regenerate it from the tables"
    doc = rendered["us-population-type-2-diabetes.md"]
    # The derived numbers in the document are the code's: the target shares appear in the derivation table.
    t = pe.load_targets("US", "type-2-diabetes")
    assert f"| {100 * t.marginals['race_ethnicity']['nh_white']:.1f} |" in doc
    assert "[S60" in doc and "[S1" in doc and "raking" in doc


def test_population_words_resolve_and_unknown_populations_list_what_exists():
    for text in ("US", "US adults", "the US population", "United States", "American", "based on the US population"):
        assert pe.resolve_population(text) == "US", text
    assert pe.resolve_population(None) is None and pe.resolve_population("source sample") is None
    with pytest.raises(ToolInputError, match=r"no figures for the population 'Brazilian'.*US \(.*type-2-diabetes"):
        pe.resolve_population("Brazilian")
    with pytest.raises(ToolInputError, match=r"no US figures .* heart-failure.*type-2-diabetes"):
        pe.load_targets("US", "heart-failure")


# ---- planning ------------------------------------------------------------------------------------
def _schema():
    from synthehr.tools.store.schema import SourceSchema

    cols = [c.model_copy(update={"categories": RACES}) if c.name == "race_ethnicity" else c for c in FIXTURE_COLUMNS]
    meta = FIXTURE_META.model_copy(update={"name": SRC, "title": "Fixture US clinic (synthetic test records)"})
    return SourceSchema(meta=meta, columns=cols, condition_columns=["diabetes", "sex"])


def test_plan_allocates_exact_counts_and_user_proportions_override_the_matching_part():
    t = pe.load_targets("US", "type-2-diabetes")
    plans, composed = pe.plan_cells(t, _schema(), 2000)
    assert sum(p.count for p in plans) == 2000 and len(plans) == 30
    for dim in pe.DIMENSIONS:
        for g, share in t.marginals[dim].items():
            assert composed[dim][g] == pytest.approx(share)
    hisp = next(p for p in plans if p.key == ("18-44", "female", "hispanic"))
    assert "age_years<=44" in hisp.filters and "sex=female" in hisp.filters
    assert "race_ethnicity!=Non-Hispanic White" in hisp.filters  # Hispanic = two source categories

    plans, composed = pe.plan_cells(t, _schema(), 1000, proportions={"sex=female": 0.4})
    assert composed["sex"]["female"] == pytest.approx(0.4)
    assert sum(p.count for p in plans if p.key[1] == "female") == 400
    # Within each sex the cells keep the targets' proportions (raking to the user's margin).
    women = {p.key: p.share for p in plans if p.key[1] == "female"}
    tw = {k: v for k, v in t.cells.items() if k[1] == "female"}
    for k in women:
        assert women[k] / 0.4 == pytest.approx(tw[k] / sum(tw.values()))

    plans, composed = pe.plan_cells(t, _schema(), 500, filters=["age_years>=65"])
    assert composed["age_band"]["65+"] == pytest.approx(1.0) and {p.key[0] for p in plans} == {"65+"}
    with pytest.raises(ToolInputError, match="no US target cell"):
        pe.plan_cells(t, _schema(), 10, filters=["age_years>=65"], proportions={"age_years<30": 0.5,
                                                                               "age_years>=30": 0.5})


def test_source_whose_categories_do_not_map_is_refused():
    from tests._dpgan_fixture import FIXTURE_SCHEMA

    with pytest.raises(ToolInputError, match="race_ethnicity categories"):
        pe.plan_cells(pe.load_targets("US", "type-2-diabetes"), FIXTURE_SCHEMA, 10)


# ---- end to end on the fixture ---------------------------------------------------------------------
def _register(deps, tmp: Path) -> None:
    from tests._dpgan_fixture import coerce_frame

    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    frame = fixture_frame(3000, seed=11)  # enough rows for the small GAN to learn every group
    # NHANES-like oversampling: White under-represented, Black and Asian over-represented.
    frame["race_ethnicity"] = rng.choice(RACES, len(frame), p=[0.12, 0.10, 0.33, 0.23, 0.14, 0.08])
    schema = _schema()
    coerce_frame(frame, schema).to_csv(tmp / "fixture.csv", index=False)
    body = {"meta": schema.meta.model_dump(), "condition_columns": schema.condition_columns,
            "columns": [c.model_dump(mode="json", exclude_none=True) for c in schema.columns]}
    (tmp / "META.yaml").write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    deps.catalog.register(tmp / "fixture.csv", tmp / "META.yaml")


@pytest.fixture
def us_deps(tmp_path, monkeypatch):
    import synthehr.tools.train_generator as tg
    from synthehr.configs.settings import load_settings
    from synthehr.tools.deps import build_deps

    monkeypatch.setattr(tg, "_quality_hook", lambda *a, **k: {"skipped": "tests"})
    settings = load_settings(env={"SYNTHEHR_HOME": str(tmp_path / "ws"), **FAST})
    deps = build_deps(settings=settings)
    _register(deps, tmp_path / "src")
    return deps


def test_headline_request_matches_us_targets_within_two_points(us_deps):
    from synthehr.agent.grounding import extract_facts
    from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort

    facts = extract_facts(HEADLINE)
    assert facts.population == "US" and facts.n == 2000 and facts.n_obs == 20
    # First a cohort without a population: it trains the model (charged) and says it mirrors the sample.
    plain = generate_cohort(us_deps, GenerateCohortArgs(condition="type 2 diabetes", n=200, source=SRC, seed=2,
                                                        epsilon=EPS))
    assert plain.data["population"]["applied"] is False
    card_md = Path(plain.data["files"]["card_md"]).read_text()
    assert "mirrors the make-up of the source sample" in card_md and "mirrors the make-up" in plain.text
    charges = [(c.mechanism, c.epsilon, c.ref) for c in us_deps.workspace.charges(SRC)]
    assert charges, "the first request trains and is charged"

    res = generate_cohort(us_deps, GenerateCohortArgs(condition="type 2 diabetes", n=facts.n, observations=facts.n_obs,
                                                      population=facts.population, source=SRC, seed=5))
    # Public figures + post-processing of the already-trained model: the ledger is unchanged.
    assert res.data["trained_new_model"] is False
    assert [(c.mechanism, c.epsilon, c.ref) for c in us_deps.workspace.charges(SRC)] == charges
    import pandas as pd

    frame = pd.read_csv(res.data["files"]["csv"])
    assert len(frame) == 2000
    t = pe.load_targets("US", "type-2-diabetes")
    got = pe.achieved_shares(t, frame, _schema())
    for dim in pe.DIMENSIONS:
        for g, share in t.marginals[dim].items():
            assert abs(got[dim][g] - share) <= 0.02, (dim, g, got[dim][g], share)
    # The frame is not the source's make-up: Black and Asian shares are near the US targets, not 23% / 14%.
    assert got["race_ethnicity"]["nh_white"] > 0.5
    card = json.loads(Path(res.data["files"]["card_json"]).read_text())
    pop = card["population"]
    assert pop["applied"] is True and pop["population"] == "US"
    assert {t["id"] for t in pop["tables"]} == {"us-adults-2023", "us-diabetes-prevalence"}
    assert {"S60", "S1"} <= set(pop["sources"]) and pop["max_abs_diff_points"] <= 2.0
    assert "us-population-type-2-diabetes" in pop["documents"]
    md = Path(res.data["files"]["card_md"]).read_text()
    assert "## Population" in md and "us-diabetes-prevalence v1" in md and "[S60]" in md and "[S1]" in md
    assert "| race/ethnicity | non-Hispanic White |" in md
    # The lineage indexed for provenance questions about this data set says how it was matched.
    from synthehr.tools.engines.knowledge_index import lineage_chunks

    lineage = {c.section: c.text for c in lineage_chunks(card)}
    assert "match the US population" in lineage["Population"] and "us-population-type-2-diabetes" in lineage["Population"]
    plain_card = json.loads(Path(plain.data["files"]["card_json"]).read_text())
    assert "source sample" in {c.section: c.text for c in lineage_chunks(plain_card)}["Population"]
    assert "matched to US figures" in res.text and "us-adults-2023" in res.text
    assert "non-Hispanic White" in res.text and "(target" in res.text


def test_user_share_overrides_and_unknown_population_is_refused(us_deps):
    import pandas as pd

    from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort

    with pytest.raises(ToolInputError, match=r"no figures for the population 'Brazilian'.*US .*registered sources"):
        generate_cohort(us_deps, GenerateCohortArgs(condition="type 2 diabetes", n=50, population="Brazilian",
                                                    source=SRC))
    with pytest.raises(ToolInputError, match="(?i)heart.failure"):  # no source holds it (nor US figures)
        generate_cohort(us_deps, GenerateCohortArgs(condition="heart failure", n=50, population="US", source=SRC))
    assert us_deps.workspace.charges(SRC) == []  # refused before anything was trained
    res = generate_cohort(us_deps, GenerateCohortArgs(condition="type 2 diabetes", n=300, population="US adults",
                                                      source=SRC, proportions={"sex=female": 0.4}, seed=3,
                                                      epsilon=EPS))
    frame = pd.read_csv(res.data["files"]["csv"])
    assert (frame["sex"] == "female").sum() == 120
    rows = {(r["dimension"], r["group"]): r for r in res.data["population"]["shares"]}
    assert rows[("sex", "female")]["target_pct"] == 40.0 and rows[("sex", "female")]["achieved_pct"] == 40.0
    assert rows[("sex", "female")]["population_target_pct"] != 40.0


def test_grounding_passes_named_populations_on():
    from synthehr.agent.grounding import extract_facts

    assert extract_facts("generate 500 diabetes patients based on the Brazilian population").population == "Brazilian"
    assert extract_facts("give us 500 type 2 diabetes patients").population is None
    assert extract_facts("500 type 2 diabetes patients from NHANES").population is None
    assert extract_facts("300 American adults with hypertension").population == "US"
    assert extract_facts("500 type 2 diabetes patients like Hispanic patients").population is None  # a group, not a population


# ---- retrieval on the real index --------------------------------------------------------------------
def test_provenance_question_retrieves_the_population_documents(tmp_path):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from synthehr.tools.engines.knowledge_index import KnowledgeIndex

    root = tmp_path / "k"
    shutil.copytree(KNOWLEDGE, root / "knowledge", ignore=shutil.ignore_patterns("__pycache__"))
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"),
                                       settings=ChromaSettings(anonymized_telemetry=False))
    index = KnowledgeIndex(client, collection="pop", docs_root=root / "knowledge")
    index.build()
    for q in ("how did you make this match the US population?",
              "where do the US population targets for the diabetes cohort come from?"):
        top = index.rank_documents(q, k=3)
        assert any(d.startswith("us-population-") for d in top), (q, top)
    top = index.rank_documents("what share of US adults with diabetes are non-Hispanic Black?", k=3)
    assert "us-population-type-2-diabetes" in top, top
    index.close()


def test_cell_by_cell_route_and_other_proportions_hold(us_deps, monkeypatch):
    """Without the pool (or with proportions on other columns) every cell is its own model.sample call."""
    import pandas as pd

    from synthehr.tools.cohort_stats import CohortStatsArgs, cohort_stats
    from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort

    monkeypatch.setattr(pe, "POOL_ROUNDS", 0)
    calls: list[dict] = []
    from synthehr.tools.engines.dpgan import TrainedGenerator

    real = TrainedGenerator.sample

    def spy(self, n, **kw):  # noqa: ANN001, ANN202
        calls.append({"n": n, **kw})
        return real(self, n, **kw)

    monkeypatch.setattr(TrainedGenerator, "sample", spy)
    res = generate_cohort(us_deps, GenerateCohortArgs(condition="type 2 diabetes", n=400, population="US", source=SRC,
                                                      proportions=["smoking_status=current:0.25"], seed=4,
                                                      epsilon=EPS))
    frame = pd.read_csv(res.data["files"]["csv"])
    assert len(frame) == 400 and len([c for c in calls if c["n"] > 0]) == 30  # one call per demographic cell
    assert all(c["proportions"] == ["smoking_status=current:0.25"] for c in calls if c["n"] > 0)
    assert abs((frame["smoking_status"] == "current").mean() - 0.25) <= 0.02
    assert res.data["population"]["max_abs_diff_points"] <= 2.0
    # cohort_stats says what the numbers stand for; no survey weights in this source.
    st = cohort_stats(us_deps, CohortStatsArgs(dataset=res.data["dataset_id"]))
    rep = st.data["representativeness"]
    assert rep["population_targets"] == "US" and rep["weight_column"] is None and "weighted_means" not in rep


def test_weighted_means_where_weights_exist_and_sample_note_otherwise():
    import pandas as pd

    frame = pd.DataFrame({"hba1c_pct": [6.0, 8.0, 10.0], "sex": ["female", "male", "male"],
                          "survey_weight": [2.0, 1.0, 1.0]})
    rep = pe.representativeness(frame, {"population": {"applied": False}}, ["hba1c_pct", "sex"])
    assert rep["weight_column"] == "survey_weight" and rep["population_targets"] is None
    assert rep["weighted_means"] == {"hba1c_pct": pytest.approx((12 + 8 + 10) / 4)}
    rep = pe.representativeness(frame.drop(columns="survey_weight"), {}, ["hba1c_pct"])
    assert "mirrors the make-up of the source sample" in rep["note"] and "no survey weights" in rep["note"]


@pytest.mark.slow
def test_headline_on_the_real_nhanes_model(tmp_path, monkeypatch):
    """The headline request on NHANES 2017-2018 (trains a quick generator: about a minute)."""
    import pandas as pd

    import synthehr.tools.train_generator as tg
    from synthehr.configs.settings import load_settings
    from synthehr.tools.deps import build_deps
    from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort

    monkeypatch.setattr(tg, "_quality_hook", lambda *a, **k: {"skipped": "tests"})
    deps = build_deps(settings=load_settings(env={"SYNTHEHR_HOME": str(tmp_path / "ws"),
                                                  "SYNTHEHR_TRAINING__EPOCHS": "2"}))
    plain = generate_cohort(deps, GenerateCohortArgs(condition="type 2 diabetes", n=2000, observations=20, seed=1))
    spent = deps.workspace.spent("nhanes-2017-2018")
    res = generate_cohort(deps, GenerateCohortArgs(condition="type 2 diabetes", n=2000, observations=20,
                                                   population="US", seed=1))
    assert res.data["source"] == "nhanes-2017-2018" and res.data["trained_new_model"] is False
    assert deps.workspace.spent("nhanes-2017-2018") == spent
    t = pe.load_targets("US", "type-2-diabetes")
    from synthehr.tools.store.sources.nhanes import SCHEMA

    got = pe.achieved_shares(t, pd.read_csv(res.data["files"]["csv"]), SCHEMA)
    before = pe.achieved_shares(t, pd.read_csv(plain.data["files"]["csv"]), SCHEMA)
    for dim in pe.DIMENSIONS:
        for g, share in t.marginals[dim].items():
            assert abs(got[dim][g] - share) <= 0.02, (dim, g, got[dim][g], share)
    # Without the population the cohort mirrors NHANES' oversampled make-up, far from the US targets.
    assert before["race_ethnicity"]["nh_white"] < t.marginals["race_ethnicity"]["nh_white"] - 0.1
    assert json.loads(Path(res.data["files"]["card_json"]).read_text())["population"]["applied"] is True


def test_a_population_that_names_a_source_mirrors_it(tmp_path):
    from synthehr.configs.settings import load_settings
    from synthehr.tools.deps import build_deps
    from synthehr.tools.generate_cohort import population_name

    deps = build_deps(settings=load_settings(env={"SYNTHEHR_HOME": str(tmp_path / "ws")}))
    assert population_name(deps, "NHANES") == (None, True)
    assert population_name(deps, "US adults") == ("US", False)
    assert population_name(deps, None) == (None, False)
    with pytest.raises(ToolInputError, match=r"'Brazilian'.*nhanes-2017-2018"):
        population_name(deps, "Brazilian")
