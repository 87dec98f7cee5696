"""Training and sampling throughput of this engine vs a previous commit, in one run, same machine.

    OMP_NUM_THREADS=1 python -m benchmarks.throughput_compare --baseline-tree /tmp/engine_v1 [--epochs 5] [--repeats 3]

The baseline tree is an exported older commit (`git archive <commit> | tar -x -C DIR`). Each engine
trains in its own subprocess (PYTHONPATH = its tree) on the NHANES benchmark columns at epsilon 1,
one thread, and samples 200,000 rows. Reported: row-epochs/s of the whole fit, of the DP-SGD phase
alone where the engine reports it, and sampling rows/s. With --repeats R the two engines alternate R times
(baseline, current, baseline, ...) so both see the same machine load; medians and current/baseline ratios
are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
from benchmarks import data as bdata
from synthehr.configs.settings import TrainingSettings
from synthehr.tools.engines.dpgan import train_dpgan, default_delta
d = bdata.load("nhanes")
train = d.frame
epochs = int(sys.argv[1])
t0 = time.perf_counter()
g = train_dpgan(train, d.schema, target_epsilon=1.0, target_delta=default_delta(len(train)), conditions=[d.label],
                epochs=epochs, seed=0, settings=TrainingSettings(threads=1, epochs=epochs))
fit = time.perf_counter() - t0
t0 = time.perf_counter(); g.sample(200_000, seed=1); samp = time.perf_counter() - t0
det = getattr(g, "privacy_details", {}) or {}
adv = det.get("seconds", fit) - (det.get("seconds_pretrain") or 0.0)
print(json.dumps({"rows": len(train), "epochs": epochs, "fit_s": fit, "row_epochs_per_s": len(train) * epochs / fit,
                  "row_epochs_per_s_dpsgd": len(train) * epochs / adv, "sample_rows_per_s": 200_000 / samp}))
'''


def run_tree(tree: Path, epochs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(epochs)], cwd=tree, env=env, capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        return {"error": r.stderr[-500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    import statistics

    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-tree", required=True)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args()
    here = Path(__file__).resolve().parent.parent
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    for _ in range(max(1, a.repeats)):
        runs["baseline"].append(run_tree(Path(a.baseline_tree), a.epochs))
        runs["current"].append(run_tree(here, a.epochs))
    keys = ("fit_s", "row_epochs_per_s", "row_epochs_per_s_dpsgd", "sample_rows_per_s")
    med = {name: {k: statistics.median(r[k] for r in rs if k in r) for k in keys if any(k in r for r in rs)}
           for name, rs in runs.items()}
    ratio = {k: med["current"][k] / med["baseline"][k] for k in keys if k in med["current"] and k in med["baseline"]}
    out = {"runs": runs, "median": med, "ratio_current_over_baseline": ratio, "repeats": a.repeats, "epochs": a.epochs}
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
