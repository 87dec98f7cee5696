"""Shared by the peer runners. Runs inside a peer's own virtual environment: standard library,
numpy and pandas only (no project imports).

A runner is called as ``python <runner>.py SPEC.json``. The spec:

    {"train_csv": path, "label": col, "threads": 1, "deadline_unix": float | null,
     "columns": [{"name", "type", "lower", "upper", "categories"}, ...],
     "jobs": [{"id", "method", "epsilon", "delta", "seed", "n_sample", "n_throughput",
               "epochs", "batch_size", "time_limit_s", "options": {...}, "out_csv", "out_json"}, ...]}

For each job the runner fits the method on the train CSV, writes ``n_sample`` synthetic rows to
``out_csv``, times a second draw of ``n_throughput`` rows, and writes ``out_json``:
    {"status": "ok" | "error" | "timeout" | "skipped", "error", "fit_seconds", "sample_seconds", "sample_rows",
     "throughput_seconds", "throughput_rows", "epochs_run", "reported_epsilon", "reported_delta",
     "epsilon_note", "versions"}
Errors are recorded as the exception type plus a short message; no data row is ever printed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


def load_spec(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_train(spec: dict[str, Any]) -> pd.DataFrame:
    """The train CSV with each column typed: numbers as float/int, binary as int, categories as str."""
    dtypes = {}
    for c in spec["columns"]:
        dtypes[c["name"]] = str if c["type"] == "categorical" else float
    frame = pd.read_csv(spec["train_csv"], dtype=dtypes)
    for c in spec["columns"]:
        if c["type"] in ("integer", "binary"):
            frame[c["name"]] = frame[c["name"]].round().astype(int)
    return frame[[c["name"] for c in spec["columns"]]]


def postprocess(frame: pd.DataFrame, columns: list[dict[str, Any]]) -> pd.DataFrame:
    """Clip numbers to the public bounds, round integers, map binary to 0/1, drop unknown categories."""
    out = pd.DataFrame(index=range(len(frame)))
    frame = frame.reset_index(drop=True)
    for c in columns:
        s = frame[c["name"]]
        if c["type"] in ("continuous", "integer"):
            x = pd.to_numeric(s, errors="coerce").astype(float).clip(c["lower"], c["upper"])
            out[c["name"]] = x.round() if c["type"] == "integer" else x
        elif c["type"] == "binary":
            x = pd.to_numeric(s, errors="coerce").astype(float)
            out[c["name"]] = np.where(np.isnan(x), np.nan, (x >= 0.5).astype(float))
        else:
            vals = s.astype(object).map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
            out[c["name"]] = vals.where(vals.isin(c["categories"]), None)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - every peer venv has torch
        pass


def set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass


class JobTimeout(Exception):
    """A job ran past its time limit (raised from SIGALRM between Python bytecodes)."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise JobTimeout("job exceeded its time limit")


def short_error(exc: BaseException) -> str:
    msg = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {msg[:300]}"


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of `packages` in this venv ("?" when one is missing), plus Python's."""
    from importlib.metadata import version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            out[pkg] = "?"
    out["python"] = sys.version.split()[0]
    return out


FitFn = Callable[[dict[str, Any], pd.DataFrame, dict[str, Any]], tuple[Any, dict[str, Any]]]
SampleFn = Callable[[Any, int], pd.DataFrame]


def run_jobs(spec_path: str, fit: FitFn, sample: SampleFn, versions: Callable[[], dict[str, str]]) -> int:
    """Fit/sample every job of the spec; one job's failure does not stop the others."""
    spec = load_spec(spec_path)
    set_threads(int(spec.get("threads") or 1))
    train = read_train(spec)
    columns = spec["columns"]
    deadline = spec.get("deadline_unix")
    ver = versions()
    for job in spec["jobs"]:
        result: dict[str, Any] = {"id": job["id"], "method": job["method"], "versions": ver, "train_rows": len(train)}
        if deadline is not None and time.time() > float(deadline):
            result.update(status="skipped", error="time budget of the benchmark run exhausted")
        else:
            limit = int(job.get("time_limit_s") or 0)
            if limit > 0:
                signal.signal(signal.SIGALRM, _alarm)
                signal.alarm(limit)
            try:
                seed_everything(int(job["seed"]))
                t0 = time.perf_counter()
                model, info = fit(job, train.copy(), spec)
                fit_seconds = time.perf_counter() - t0
                signal.alarm(0)
                t0 = time.perf_counter()
                synth = sample(model, int(job["n_sample"]))
                sample_seconds = time.perf_counter() - t0
                synth = postprocess(synth, columns)
                synth.to_csv(job["out_csv"], index=False)
                n_tp = int(job.get("n_throughput") or 0)
                tp_seconds = None
                if n_tp > 0:
                    t0 = time.perf_counter()
                    sample(model, n_tp)
                    tp_seconds = time.perf_counter() - t0
                result.update(
                    status="ok",
                    fit_seconds=fit_seconds,
                    sample_seconds=sample_seconds,
                    sample_rows=len(synth),
                    throughput_seconds=tp_seconds,
                    throughput_rows=n_tp,
                    **info,
                )
            except JobTimeout:
                result.update(status="timeout", error=f"training did not finish within the {limit} s cap per job")
            except Exception as exc:  # noqa: BLE001 - one method failing must not stop the run
                result.update(status="error", error=short_error(exc))
                traceback.print_exception(type(exc), exc, None, file=sys.stderr)
            finally:
                signal.alarm(0)
        with open(job["out_json"], "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, default=float)
        print(f"[peer] {job['id']}: {result['status']}", file=sys.stderr, flush=True)
    return 0
