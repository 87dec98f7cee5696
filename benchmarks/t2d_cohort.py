"""NHANES T2D cohort check (issue 11): real `diabetes == 1` adults vs a synthetic diabetes cohort.

    OMP_NUM_THREADS=1 python -m benchmarks.t2d_cohort --epsilon 1 --seeds 0 1 2 [--json out.json]

Trains the engine on all NHANES 2017-2018 adults (public data; n_public = the published adult count)
at the given epsilon with the default settings, samples 2,000 records with diabetes fixed to 1 and
prints the issue's table (real vs synthetic) per seed, plus pass/fail against the targets:
age mean within 3 y, race/ethnicity TVD <= 0.10, BMI within 1.5, HbA1c within 0.3,
corr(BMI, waist) >= 0.75, men 10-18 cm taller than women; and per numeric column the share of synthetic
values outside the real cohort's [min, max] (far-range tails).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd


def cohort_table(df: pd.DataFrame) -> dict[str, float]:
    num = lambda c: pd.to_numeric(df[c], errors="coerce").astype(float)  # noqa: E731
    age = num("age_years")
    race = df["race_ethnicity"].astype(str).value_counts(normalize=True)
    h = num("height_cm")
    sex = df["sex"].astype(str)
    dx = num("diabetes_diagnosed") == 1
    ins = num("insulin_now") == 1
    a1c = num("hba1c_pct")
    untreated = dx & ~ins & (num("diabetes_pills") != 1)
    return {
        "n": float(len(df)), "age_mean": float(age.mean()), "share_65_plus": float((age >= 65).mean()),
        "share_18_44": float((age <= 44).mean()),
        **{f"race:{k}": float(race.get(k, 0.0)) for k in ("Non-Hispanic White", "Non-Hispanic Black",
                                                          "Mexican American", "Non-Hispanic Asian",
                                                          "Other Hispanic", "Other or multiracial")},
        "bmi_mean": float(num("bmi_kg_m2").mean()), "hba1c_mean": float(a1c.mean()),
        "share_hba1c_below_6_5": float((a1c < 6.5).mean()),
        "insulin_among_dx": float(ins[dx].mean()), "pills_among_dx": float((num("diabetes_pills") == 1)[dx].mean()),
        "stroke": float((num("stroke") == 1).mean()),
        "corr_bmi_waist": float(num("bmi_kg_m2").corr(num("waist_cm"))),
        "corr_age_sbp": float(age.corr(num("sbp_mmhg"))), "corr_sbp_dbp": float(num("sbp_mmhg").corr(num("dbp_mmhg"))),
        "height_women": float(h[sex == "female"].mean()), "height_men": float(h[sex == "male"].mean()),
        "hba1c_insulin_users": float(a1c[dx & ins].mean()), "hba1c_untreated": float(a1c[untreated].mean()),
        "duration_missing_among_dx": float(num("diabetes_duration_years")[dx].isna().mean()),
        "duration_mean": float(num("diabetes_duration_years").mean()),
        "sbp_p99": float(num("sbp_mmhg").quantile(0.99)),
    }


NUMERIC = ("age_years", "height_cm", "weight_kg", "bmi_kg_m2", "waist_cm", "sbp_mmhg", "dbp_mmhg", "pulse_bpm",
           "hba1c_pct", "total_chol_mg_dl", "hdl_mg_dl", "non_hdl_chol_mg_dl", "diabetes_age_at_diagnosis",
           "diabetes_duration_years")


def beyond_real_range(real: pd.DataFrame, syn: pd.DataFrame) -> dict[str, float]:
    """Per numeric column, the share of synthetic values outside the real cohort's own [min, max] (a
    value no real member of the cohort has: a clinician's first check of a synthetic table's tails)."""
    out = {}
    for c in NUMERIC:
        r = pd.to_numeric(real[c], errors="coerce").dropna()
        s = pd.to_numeric(syn[c], errors="coerce").dropna()
        if len(r) and len(s):
            out[c] = float(((s < r.min()) | (s > r.max())).mean())
    return out


def race_tvd(a: dict, b: dict) -> float:
    keys = [k for k in a if k.startswith("race:")]
    return 0.5 * sum(abs(a[k] - b[k]) for k in keys)


def targets(real: dict, syn: dict) -> dict[str, bool]:
    gap = syn["height_men"] - syn["height_women"]
    return {"age_within_3y": abs(syn["age_mean"] - real["age_mean"]) <= 3,
            "race_tvd_le_0.10": race_tvd(real, syn) <= 0.10,
            "bmi_within_1.5": abs(syn["bmi_mean"] - real["bmi_mean"]) <= 1.5,
            "hba1c_within_0.3": abs(syn["hba1c_mean"] - real["hba1c_mean"]) <= 0.3,
            "corr_bmi_waist_ge_0.75": syn["corr_bmi_waist"] >= 0.75,
            "men_10_18cm_taller": 10 <= gap <= 18}


def run(epsilon: float, seed: int, epochs: int | None = None) -> dict:
    from synthehr.configs.settings import Settings, TrainingSettings
    from synthehr.tools.engines.dpgan import default_delta, train_dpgan
    from synthehr.tools.store.sources import nhanes

    frame = nhanes.load()
    conds = nhanes.SCHEMA.condition_columns
    t0 = time.perf_counter()
    settings = TrainingSettings(threads=1, **({"epochs": epochs} if epochs else {}))
    model = train_dpgan(frame, nhanes.SCHEMA, target_epsilon=epsilon, target_delta=default_delta(len(frame)),
                        conditions=conds, seed=seed, settings=settings, preprocessing_share=Settings().privacy.preprocessing_share,
                        n_public=nhanes.META.n_public or len(frame))
    train_s = time.perf_counter() - t0
    syn = model.sample(2000, seed=seed, fixed={"diabetes": 1})
    real_rows = frame[pd.to_numeric(frame["diabetes"], errors="coerce") == 1]
    real = cohort_table(real_rows)
    s = cohort_table(syn)
    beyond = beyond_real_range(real_rows, syn)
    return {"epsilon": epsilon, "seed": seed, "epsilon_spent": model.epsilon, "train_seconds": round(train_s, 1),
            "real": real, "synthetic": s, "race_tvd": race_tvd(real, s), "targets": targets(real, s),
            "beyond_real_range": beyond}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out = [run(a.epsilon, s, a.epochs) for s in a.seeds]
    for r in out:
        print(f"seed {r['seed']}: eps spent {r['epsilon_spent']:.3f}, {r['train_seconds']} s, race TVD {r['race_tvd']:.3f}")
        for k in r["real"]:
            print(f"  {k:28s} real {r['real'][k]:8.3f}   synthetic {r['synthetic'][k]:8.3f}")
        print("  targets:", r["targets"])
        worst = sorted(r["beyond_real_range"].items(), key=lambda kv: -kv[1])[:3]
        print("  share beyond the real cohort's range (worst 3):", ", ".join(f"{k} {v:.1%}" for k, v in worst))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
