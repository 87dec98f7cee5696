"""SmartNoise synth peers: DP-CTGAN (opacus 0.14 DP-SGD), MST and AIM (private-pgm marginals).

Runs in benchmarks/.venvs/smartnoise (see requirements-smartnoise.txt). Usage: python smartnoise_runner.py SPEC.json

Encodings use the public bounds and categories of the spec, so SmartNoise spends no budget on
preprocessing (preprocessor_eps=0):
- dpctgan: numbers -> MinMaxTransformer(lower, upper); binary/categorical -> label + one-hot.
  Library defaults otherwise (sigma=5, batch 500, max_per_sample_grad_norm=1); `epochs` is a cap:
  DP-CTGAN also stops when its RDP accountant passes the target. The reported epsilon is read from
  the opacus privacy engine after the last step (SmartNoise checks the budget only at the start of
  an epoch, so the spent epsilon can exceed the target).
- mst / aim: numbers -> BinTransformer(bins, lower, upper) (sampled values are bin midpoints);
  binary/categorical -> LabelTransformer. They calibrate zCDP noise to (epsilon, delta) exactly.
  AIM's `rounds` option caps its rounds (default in SmartNoise: 16 x number of columns).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import pandas as pd

from _common import package_versions, run_jobs


def _versions() -> dict[str, str]:
    return package_versions(("smartnoise-synth", "opacus", "torch", "mbi", "jax", "pandas", "numpy"))


def _fit(job: dict[str, Any], train: pd.DataFrame, spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    warnings.filterwarnings("ignore")
    import opacus
    from snsynth import Synthesizer
    from snsynth.transform import (
        BinTransformer,
        ChainTransformer,
        LabelTransformer,
        MinMaxTransformer,
        OneHotEncoder,
        TableTransformer,
    )

    method = job["method"]
    eps, delta = float(job["epsilon"]), float(job["delta"])
    opts = dict(job.get("options") or {})
    cols = spec["columns"]
    if method == "dpctgan":
        engines: list[Any] = []
        base = opacus.PrivacyEngine

        class CapturingEngine(base):  # type: ignore[misc, valid-type]
            def __init__(self, *a: Any, **k: Any) -> None:
                super().__init__(*a, **k)
                engines.append(self)

        opacus.PrivacyEngine = CapturingEngine
        try:
            tt = TableTransformer(
                [
                    MinMaxTransformer(lower=c["lower"], upper=c["upper"], negative=True)
                    if c["type"] in ("continuous", "integer")
                    else ChainTransformer([LabelTransformer(), OneHotEncoder()])
                    for c in cols
                ]
            )
            synth = Synthesizer.create(
                "dpctgan",
                epsilon=eps,
                delta=delta,
                epochs=int(job["epochs"]),
                batch_size=int(job.get("batch_size") or 500),
                verbose=False,
                cuda=False,
                **opts,
            )
            synth.fit(train, transformer=tt, preprocessor_eps=0.0)
        finally:
            opacus.PrivacyEngine = base
        engine = engines[-1]
        spent = float(engine.get_privacy_spent(delta)[0])
        n = len(train)
        steps_per_epoch = max(n // int(job.get("batch_size") or 500), 1)
        # Two discriminator optimizer steps (fake, then real) per iteration.
        epochs_run = float(engine.steps) / (2 * steps_per_epoch)
        return synth, {
            "epochs_run": epochs_run,
            "reported_epsilon": spent,
            "reported_delta": delta,
            "epsilon_note": "opacus 0.14 RDP accountant after the last step (assumes Poisson sampling; "
            "DP-CTGAN samples batches by conditional vector)",
            "sigma": float(getattr(synth, "sigma", float("nan"))),
        }
    bins = int(opts.pop("bins", 20))
    transformers = []
    for c in cols:
        if c["type"] in ("continuous", "integer"):
            nb = bins
            if c["type"] == "integer":
                nb = int(min(bins, c["upper"] - c["lower"] + 1))
            transformers.append(BinTransformer(bins=nb, lower=c["lower"], upper=c["upper"]))
        else:
            transformers.append(LabelTransformer())
    tt = TableTransformer(transformers)
    synth = Synthesizer.create(method, epsilon=eps, delta=delta, verbose=False, **opts)
    synth.fit(train, transformer=tt, preprocessor_eps=0.0)
    return synth, {
        "epochs_run": None,
        "reported_epsilon": eps,
        "reported_delta": delta,
        "epsilon_note": "zCDP calibrated to (epsilon, delta) by construction",
        "bins": bins,
    }


def _sample(model: Any, n: int) -> pd.DataFrame:
    out = model.sample(n)
    return out if isinstance(out, pd.DataFrame) else pd.DataFrame(out)


if __name__ == "__main__":
    sys.exit(run_jobs(sys.argv[1], _fit, _sample, _versions))
