"""CTGAN without differential privacy (the non-private reference), from the `ctgan` package (SDV).

Runs in benchmarks/.venvs/ctgan (see requirements-ctgan.txt). Usage: python ctgan_runner.py SPEC.json
Library defaults (batch 500, pac 10, mode-specific normalisation) except `epochs`, which the
benchmark caps. Its epsilon is infinite: it is a quality ceiling, not a private method. Note that
CTGAN's conditional sampler and its mode-specific normaliser are fitted on the training rows.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import pandas as pd

from _common import package_versions, run_jobs


def _versions() -> dict[str, str]:
    return package_versions(("ctgan", "rdt", "torch", "pandas", "numpy"))


def _fit(job: dict[str, Any], train: pd.DataFrame, spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    warnings.filterwarnings("ignore")
    from ctgan import CTGAN

    discrete = [c["name"] for c in spec["columns"] if c["type"] in ("binary", "categorical")]
    model = CTGAN(
        epochs=int(job["epochs"]),
        batch_size=int(job.get("batch_size") or 500),
        verbose=False,
        enable_gpu=False,
        **(job.get("options") or {}),
    )
    model.set_random_state(int(job["seed"]))
    model.fit(train, discrete_columns=discrete)
    return model, {
        "epochs_run": float(job["epochs"]),
        "reported_epsilon": None,
        "reported_delta": None,
        "epsilon_note": "not differentially private",
    }


def _sample(model: Any, n: int) -> pd.DataFrame:
    return model.sample(n)


if __name__ == "__main__":
    sys.exit(run_jobs(sys.argv[1], _fit, _sample, _versions))
