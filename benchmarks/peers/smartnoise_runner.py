"""SmartNoise synth peers: DP-CTGAN (opacus 0.14 DP-SGD), MST and AIM (private-pgm marginals).

Runs in benchmarks/.venvs/smartnoise (see requirements-smartnoise.txt). Usage: python smartnoise_runner.py SPEC.json

Encodings use the public bounds and categories of the spec, so SmartNoise spends no budget on
preprocessing (preprocessor_eps=0):
- dpctgan: numbers -> MinMaxTransformer(lower, upper); binary/categorical -> label + one-hot.
  Library defaults (sigma=5, batch 500 capped at n/2, max_per_sample_grad_norm=1) except the epochs:
  the most epochs whose opacus-0.14 RDP epsilon stays within the target (`dpctgan_epochs_within`), at
  most `epochs` (SmartNoise's default 300), so it spends its target without passing it. The reported
  epsilon is read from the opacus privacy engine after the last step.
- mst / aim: numbers -> BinTransformer(bins, lower, upper); binary/categorical -> LabelTransformer
  without a null cell (complete-case data). Sampled values are drawn uniformly within their bin
  (post-processing). They calibrate zCDP noise to (epsilon, delta) exactly. AIM runs SmartNoise's
  code with warm-started estimation (`_reference_aim_class`) and the authors' default rounds
  (16 x columns, a maximum) unless the job's `rounds` option says otherwise.
See benchmarks/README.md, "Peer settings".
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import pandas as pd

from _common import package_versions, run_jobs


def _versions() -> dict[str, str]:
    return package_versions(("smartnoise-synth", "opacus", "torch", "mbi", "jax", "pandas", "numpy"))


def dpctgan_epochs_within(eps: float, delta: float, n: int, batch: int, sigma: float, cap: int) -> int:
    """The most epochs (at most `cap`) whose opacus-0.14 RDP epsilon stays <= eps.

    SmartNoise's DP-CTGAN checks its budget only at the start of an epoch and runs one more epoch
    past it, and its default epoch count (300) is a cap: here the epochs are set so the accountant
    it uses (same orders, sample rate batch/n, two optimizer steps per iteration: fake then real
    batch, as DPCTGAN.fit calls optimizerD.step twice) ends at or just under the target. Depends only
    on (eps, delta, n, batch, sigma): no data values.
    """
    from opacus import privacy_analysis

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    q = batch / n
    steps_per_epoch = 2 * max(n // batch, 1)

    def spent(epochs: int) -> float:
        rdp = privacy_analysis.compute_rdp(q, sigma, steps_per_epoch * epochs, orders)
        return float(privacy_analysis.get_privacy_spent(orders, rdp, delta)[0])

    lo, hi = 0, cap
    if spent(cap) <= eps:
        return cap
    while hi - lo > 1:  # spent() grows with epochs: binary search for the last epoch within eps
        mid = (lo + hi) // 2
        if spent(mid) <= eps:
            lo = mid
        else:
            hi = mid
    return lo


def _reference_aim_class() -> Any:
    """SmartNoise's AIMSynthesizer with the estimation step of the authors' reference implementation.

    snsynth 1.0.8 ports private-pgm's ``mechanisms/aim.py`` but re-estimates the graphical model from
    zero potentials (1,000 mirror-descent iterations) after every round; the reference implementation
    warm-starts each estimate from the previous model (``FactoredInference(..., warm_start=True)``).
    With the authors' default of 16 x columns rounds the cold restarts make one NHANES fit take tens of
    minutes here, so this subclass warm-starts (``potentials=model.potentials``) and runs
    ``round_iters`` iterations per round and ``final_iters`` for the released model. Selection,
    noise, budget split, sigma annealing and the model-size rule are SmartNoise's code unchanged; the
    estimation is post-processing, so privacy is unaffected. It also records the rounds run and the
    cliques selected (column indices only).
    """
    import numpy as np
    from mbi import LinearMeasurement, estimation, marginal_oracles
    from snsynth.aim.aim import AIMSynthesizer, compile_workload, filter_candidates
    from snsynth.utils import gaussian_noise

    class ReferenceAIM(AIMSynthesizer):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, round_iters: int = 250, final_iters: int = 1000, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.round_iters = int(round_iters)
            self.final_iters = int(final_iters)
            self.selected: list[tuple[str, ...]] = []
            self.rounds_run = 0
            self.rounds_cap = None

        def AIM(self, data: Any, workload: Any) -> None:  # noqa: N802 - SmartNoise's name
            rounds = self.rounds or 16 * len(data.domain)
            self.rounds_cap = rounds
            candidates = compile_workload(workload)
            answers = {cl: data.project(cl).datavector() for cl in candidates}
            oneway = [cl for cl in candidates if len(cl) == 1]
            sigma = np.sqrt(rounds / (2 * 0.9 * self.rho))
            epsilon = np.sqrt(8 * 0.1 * self.rho / rounds)
            measurements = []
            rho_used = len(oneway) * 0.5 / sigma ** 2
            for cl in oneway:
                x = np.asarray(data.project(cl).datavector())
                y = x + np.asarray(gaussian_noise(sigma, x.size))
                measurements.append(LinearMeasurement(y, cl, sigma))
            oracle = marginal_oracles.message_passing_stable
            model = estimation.mirror_descent(data.domain, measurements, iters=self.round_iters, marginal_oracle=oracle)
            terminate = False
            while not terminate:
                self.rounds_run += 1
                if self.rho - rho_used < 2 * (0.5 / sigma ** 2 + 1.0 / 8 * epsilon ** 2):
                    remaining = self.rho - rho_used
                    sigma = np.sqrt(1 / (2 * 0.9 * remaining))
                    epsilon = np.sqrt(8 * 0.1 * remaining)
                    terminate = True
                rho_used += 1.0 / 8 * epsilon ** 2 + 0.5 / sigma ** 2
                size_limit = self.max_model_size * rho_used / self.rho
                small_candidates = filter_candidates(candidates, model, size_limit)
                cl = self._worst_approximated(small_candidates, answers, model, epsilon, sigma)
                self.selected.append(tuple(cl))
                n = data.domain.size(cl)
                x = np.asarray(data.project(cl).datavector())
                y = x + np.asarray(gaussian_noise(sigma, n))
                z = model.project(cl).datavector()
                measurements.append(LinearMeasurement(y, cl, sigma))
                model = estimation.mirror_descent(data.domain, measurements, potentials=model.potentials,
                                                  iters=self.round_iters, marginal_oracle=oracle)
                w = model.project(cl).datavector()
                if np.linalg.norm(w - z, 1) <= sigma * np.sqrt(2 / np.pi) * n:
                    sigma /= 2
                    epsilon *= 2
            self.synthesizer = estimation.mirror_descent(data.domain, measurements, potentials=model.potentials,
                                                         iters=self.final_iters, marginal_oracle=oracle)

    return ReferenceAIM


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
                    else ChainTransformer([LabelTransformer(nullable=False), OneHotEncoder()])
                    for c in cols
                ]
            )
            batch = int(job.get("batch_size") or 500)
            sigma = float(opts.pop("sigma", 5.0))
            epochs_cap = int(job["epochs"])
            epochs_budget = dpctgan_epochs_within(eps, delta, len(train), batch, sigma, epochs_cap)
            if epochs_budget < 1:
                raise ValueError(f"one epoch at sigma={sigma:g}, batch {batch} already exceeds epsilon={eps:g}")
            synth = Synthesizer.create(
                "dpctgan",
                epsilon=eps,
                delta=delta,
                epochs=epochs_budget,
                sigma=sigma,
                batch_size=batch,
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
            "epochs_planned": epochs_budget,
            "epochs_cap": epochs_cap,
            "epochs_limited_by": "budget" if epochs_budget < epochs_cap else "epoch cap",
        }
    bins = int(opts.pop("bins", 20))
    transformers = []
    binned: dict[str, tuple[float, float, int]] = {}
    for c in cols:
        if c["type"] in ("continuous", "integer"):
            nb = bins
            if c["type"] == "integer":
                nb = int(min(bins, c["upper"] - c["lower"] + 1))
            transformers.append(BinTransformer(bins=nb, lower=c["lower"], upper=c["upper"]))
            binned[c["name"]] = (float(c["lower"]), float(c["upper"]), nb)
        else:
            # Complete-case data: no "missing" cell (LabelTransformer's default adds one per column,
            # an always-empty cell that only collects noise and yields missing values when sampled).
            transformers.append(LabelTransformer(nullable=False))
    tt = TableTransformer(transformers)
    opts.setdefault("verbose", False)
    if method == "aim":
        synth = _reference_aim_class()(epsilon=eps, delta=delta, **opts)
    else:
        synth = Synthesizer.create(method, epsilon=eps, delta=delta, **opts)
    synth.fit(train, transformer=tt, preprocessor_eps=0.0)
    synth._bench_binned = binned  # used by _sample to spread values within their bins
    info: dict[str, Any] = {
        "epochs_run": None,
        "reported_epsilon": eps,
        "reported_delta": delta,
        "epsilon_note": "zCDP calibrated to (epsilon, delta) by construction",
        "bins": bins,
    }
    if method == "aim":
        names = [c["name"] for c in cols]
        label_idx = f"col{names.index(spec['label'])}" if spec.get("label") in names else None
        info.update(aim_rounds_cap=synth.rounds_cap, aim_rounds_run=synth.rounds_run,
                    aim_selected=[[names[int(x[3:])] for x in cl] for cl in synth.selected],
                    aim_label_cliques=sum(1 for cl in synth.selected if label_idx in cl),
                    aim_round_iters=synth.round_iters, aim_final_iters=synth.final_iters,
                    aim_max_model_size=synth.max_model_size)
    return synth, info


def _dequantize(frame: pd.DataFrame, binned: dict[str, tuple[float, float, int]]) -> pd.DataFrame:
    """Post-processing: a value sampled at its bin's midpoint is redrawn uniformly within that bin.

    MST/AIM model binned columns; SmartNoise's BinTransformer maps a bin back to its midpoint, which
    puts every synthetic value on 20 points. Spreading it uniformly over the bin (public edges) keeps
    the released bin counts and costs no privacy. Bins narrower than 1.5 units of an integer column
    keep their midpoint (it rounds to the bin's integer).
    """
    import numpy as np

    out = frame.copy()
    for name, (lo, hi, nb) in binned.items():
        if name not in out:
            continue
        width = (hi - lo) / nb
        x = pd.to_numeric(out[name], errors="coerce").astype(float).to_numpy()
        if width < 1.5 and float(lo).is_integer() and float(hi).is_integer() and nb >= hi - lo:
            continue
        k = np.clip(np.floor((x - lo) / width), 0, nb - 1)
        spread = lo + (k + np.random.random_sample(len(x))) * width
        out[name] = np.where(np.isnan(x), np.nan, spread)
    return out


def _sample(model: Any, n: int) -> pd.DataFrame:
    out = model.sample(n)
    out = out if isinstance(out, pd.DataFrame) else pd.DataFrame(out)
    binned = getattr(model, "_bench_binned", None)
    return _dequantize(out, binned) if binned else out


if __name__ == "__main__":
    sys.exit(run_jobs(sys.argv[1], _fit, _sample, _versions))
