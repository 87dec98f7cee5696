"""`synthehr generate --source NAME` for a user source that has no condition profile."""

from __future__ import annotations

import json

import pandas as pd

from tests._dpgan_fixture import write_source
from tests.test_cli import run

FAST = {"SYNTHEHR_TRAINING__EPOCHS": "1", "SYNTHEHR_TRAINING__MARGINAL_PRETRAIN_STEPS": "20",
        "SYNTHEHR_TRAINING__BATCH_SIZE": "128", "SYNTHEHR_TRAINING__THREADS": "1"}


def test_generate_from_a_user_source_with_where_model_and_seed(tmp_path) -> None:
    data, meta = write_source(tmp_path / "src", n=400)
    r = run(["sources", "add", str(data), "--meta", str(meta), "--json"], tmp_path, env=FAST)
    assert r.returncode == 0, r.stderr
    r = run(["generate", "--source", "fixture-clinic", "-n", "60", "--where", "sex=female", "--seed", "3",
             "--epsilon", "1", "--json"], tmp_path, env=FAST)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["trained_new_model"] is True and out["n_rows"] == 60 and out["where"] == ["sex==female"]
    assert out["epsilon"] <= 1.0
    frame = pd.read_csv(out["files"]["csv"])
    assert len(frame) == 60 and (frame["sex"] == "female").all()
    assert set(frame.columns) == {"age_years", "sex", "race_ethnicity", "bmi_kg_m2", "hba1c_pct", "sbp_mmhg",
                                  "diabetes_diagnosed", "diabetes", "smoking_status"}
    a1c = frame["hba1c_pct"].dropna()
    assert ((a1c * 10).round(6) % 1 == 0).all()  # declared precision 0.1
    as_text = pd.read_csv(out["files"]["csv"], dtype=str)
    assert set(as_text["diabetes_diagnosed"].dropna()) <= {"0", "1"}  # a 0/1 column, not 1.0 / 0.0
    # the same model and seed give the same records; no new training, no new charge
    r2 = run(["generate", "--source", "fixture-clinic", "-n", "60", "--where", "sex=female", "--seed", "3",
              "--model", out["model_id"], "--json"], tmp_path, env=FAST)
    assert r2.returncode == 0, r2.stderr
    out2 = json.loads(r2.stdout)
    assert out2["trained_new_model"] is False and out2["model_id"] == out["model_id"]
    assert pd.read_csv(out2["files"]["csv"]).equals(frame)
    # a model that does not exist is a one-line user error listing the source's models
    r3 = run(["generate", "--source", "fixture-clinic", "--model", "model-nope", "--json"], tmp_path, env=FAST)
    assert r3.returncode == 2 and out["model_id"] in r3.stderr and "Traceback" not in r3.stderr
    r4 = run(["generate", "--source", "fixture-clinic", "--where", "colour=blue", "--json"], tmp_path, env=FAST)
    assert r4.returncode == 2 and "age_years" in r4.stderr


def test_file_frame_writes_zero_one_columns_with_missing_values_as_integers() -> None:
    from tests._dpgan_fixture import FIXTURE_SCHEMA
    from synthehr.tools.generate_cohort import file_frame

    frame = pd.DataFrame({"diabetes_diagnosed": [1.0, None, 0.0], "diabetes": [1, 0, 1], "hba1c_pct": [6.1, 7.0, None]})
    out = file_frame(frame, FIXTURE_SCHEMA)
    assert out.to_csv(index=False).splitlines() == ["diabetes_diagnosed,diabetes,hba1c_pct", "1,1,6.1", ",0,7.0", "0,1,"]
    assert frame["diabetes_diagnosed"].dtype == float  # the caller's frame is left as it was
