"""Side-by-side benchmark: synthehr's DP conditional GAN vs SmartNoise (DP-CTGAN, MST, AIM) and
non-private CTGAN, on identical train/holdout splits.

    nice -n 10 /work/venvs/dev/bin/python -m benchmarks.run              # full: eps 1,3,10 x seeds 0,1,2
    nice -n 10 /work/venvs/dev/bin/python -m benchmarks.run --quick      # seed 0, eps 1,3
    python -m benchmarks.run --csv data.csv --label outcome [--meta META.yaml]
    python -m benchmarks.run --render benchmarks/results/<run>.json      # rewrite the Markdown only

Peers run in their own virtual environments (created on first use under benchmarks/.venvs/ from
benchmarks/peers/requirements-*.txt) because they pin packages that conflict with the project's.
This script (project venv) splits the data, writes the train split to a temporary CSV, calls each
peer's runner through subprocess, trains synthehr in-process, and scores every synthetic table with
benchmarks.metrics on the same holdout. Output: benchmarks/results/<run>.json and .md, and
benchmarks/RESULTS.md for a full run. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).resolve().parent
# opacus 1.6 installs a stray top-level `benchmarks` package into site-packages. Run this as
# `python -m benchmarks.run` from the repository root; when run as a file, put the root first.
if __package__ in (None, ""):
    sys.path.insert(0, str(HERE.parent))
PEERS_DIR = HERE / "peers"

DP_PEERS = ("dpctgan", "mst", "aim")
ALL_METHODS = ("synthehr",) + DP_PEERS + ("ctgan",)
METHOD_LABELS = {
    "synthehr": "synthehr DP-cGAN",
    "dpctgan": "SmartNoise DP-CTGAN",
    "mst": "SmartNoise MST",
    "aim": "SmartNoise AIM",
    "ctgan": "CTGAN (no DP)",
}
PEER_VENV = {"dpctgan": "smartnoise", "mst": "smartnoise", "aim": "smartnoise", "ctgan": "ctgan"}
# Lanes per --workers: (venv, lane, methods). "fg" runs in the main thread after synthehr; "bg1"/"bg2"
# run in threads while synthehr trains. Chosen to balance wall time on NHANES.
PEER_LANES = {
    1: (("smartnoise", "fg", ("dpctgan", "mst", "aim")), ("ctgan", "fg", ("ctgan",))),
    # AIM (authors' rounds) is the slowest peer: it gets a lane of its own.
    2: (("smartnoise", "bg1", ("aim",)), ("smartnoise", "fg", ("dpctgan", "mst")), ("ctgan", "fg", ("ctgan",))),
    3: (("smartnoise", "bg1", ("dpctgan", "mst")), ("smartnoise", "bg2", ("aim",)), ("ctgan", "fg", ("ctgan",))),
    4: (("smartnoise", "bg1", ("dpctgan",)), ("smartnoise", "bg2", ("mst",)), ("smartnoise", "bg3", ("aim",)),
        ("ctgan", "fg", ("ctgan",))),
}
RUNNERS = {"smartnoise": PEERS_DIR / "smartnoise_runner.py", "ctgan": PEERS_DIR / "ctgan_runner.py"}
REQUIREMENTS = {"smartnoise": PEERS_DIR / "requirements-smartnoise.txt", "ctgan": PEERS_DIR / "requirements-ctgan.txt"}


def log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- arguments ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="nhanes,pima", help="comma list of nhanes, pima, breast_cancer (default: nhanes,pima)")
    p.add_argument("--csv", help="benchmark your own CSV instead of the built-in data sets")
    p.add_argument("--label", help="binary label column of --csv (two distinct values)")
    p.add_argument("--meta", help="optional META.yaml with public bounds/categories for --csv (else read off the data)")
    p.add_argument("--eps", default=None, help="target epsilons (default 1,3,10; --quick: 1,3)")
    p.add_argument("--seeds", default=None, help="seeds; seed s fixes the split and every method's seed (default 0,1,2; --quick: 0)")
    p.add_argument("--quick", action="store_true", help="iteration mode: seed 0, eps 1,3 (unless --eps/--seeds say otherwise)")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma list of {', '.join(ALL_METHODS)}")
    p.add_argument("--gan-epochs", type=int, default=30,
                   help="epoch cap for every GAN: DP-CTGAN and CTGAN run this many (DP-CTGAN may stop earlier at its budget); "
                   "synthehr runs its engine default up to it (default 30)")
    p.add_argument("--batch-size", type=int, default=500,
                   help="batch size of DP-CTGAN and CTGAN (their default 500; capped at half the train rows)")
    p.add_argument("--synthehr-batch-size", type=int, default=None, help="synthehr batch size (default: the engine's)")
    p.add_argument("--synthehr-epochs", type=int, default=None,
                   help="synthehr epochs (default: the engine's configured default, capped at --gan-epochs)")
    p.add_argument("--aim-rounds", type=int, default=None,
                   help="AIM's maximum number of rounds (default: the authors' 16 x number of columns, which sets the "
                   "initial noise; AIM ends earlier once its budget is spent). Fewer rounds make the one-way marginals "
                   "take most of the budget and leave a handful of two-way rounds (see benchmarks/README.md)")
    p.add_argument("--aim-round-iters", type=int, default=250,
                   help="mirror-descent iterations per AIM round, warm-started from the previous model as in the "
                   "authors' reference implementation (post-processing; the released model gets 1000) (default 250)")
    p.add_argument("--dpctgan-epochs", type=int, default=300,
                   help="DP-CTGAN epoch cap (SmartNoise's default 300); DP-CTGAN runs the most epochs whose RDP epsilon "
                   "stays within the target, up to this cap (default 300)")
    p.add_argument("--bins", type=int, default=20, help="bins per numeric column for MST/AIM (default 20)")
    p.add_argument("--holdout", type=float, default=0.3, help="holdout share of the real data (default 0.3)")
    p.add_argument("--throughput-rows", type=int, default=50_000, help="rows drawn to time sampling (default 50000)")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads for every method (default 1)")
    p.add_argument("--workers", type=int, choices=(1, 2, 3, 4), default=4,
                   help="concurrent lanes (niced, one thread each): 4 = synthehr+CTGAN | DP-CTGAN | MST | AIM (default, "
                   "fits the 40 min budget on 2 shared cores); 3 = synthehr+CTGAN | DP-CTGAN+MST | AIM; 2 = synthehr+DP-CTGAN+MST+CTGAN | "
                   "AIM; 1 = one method at a time (cleanest timings, about 3x the wall time)")
    p.add_argument("--solo-throughput", action=argparse.BooleanOptionalAction, default=True,
                   help="after the run, time one synthehr fit + sampling alone (no peer running) for the throughput targets")
    p.add_argument("--time-budget-min", type=float, default=40.0,
                   help="stop launching training jobs after this many minutes; later jobs are recorded as skipped (default 40)")
    p.add_argument("--stop-at", help="local wall-clock time HH:MM after which no job starts (tighter of this and the budget)")
    p.add_argument("--peer-job-timeout", type=int, default=1800,
                   help="seconds one peer fit may take; past it the job is recorded as timed out (default 1800: a safety "
                   "net, not a setting that shapes results)")
    p.add_argument("--venv-dir", default=str(HERE / ".venvs"), help="where peer virtual environments live")
    p.add_argument("--skip-install", action="store_true", help="never create or update peer venvs (skip peers whose venv is missing)")
    p.add_argument("--out-dir", default=str(HERE / "results"), help="where <run>.json and <run>.md are written")
    p.add_argument("--results-md", default=None,
                   help="Markdown summary path (default benchmarks/RESULTS.md for a full built-in run, else none)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the Markdown from an existing results JSON")
    p.add_argument("--reuse", metavar="JSON[,JSON...]",
                   help="take the runs of methods NOT in --methods from earlier results JSONs (same data sets, seeds and "
                   "splits; a (method, data set, seed, eps) found in several files is taken from the first), e.g. rerun only synthehr after an "
                   "engine change: --methods synthehr --reuse results/X.json; --methods none --reuse A.json,B.json "
                   "merges runs without training anything")
    p.add_argument("--nice", type=int, default=10, help="raise this process's niceness to at least this (default 10)")
    args = p.parse_args(argv)
    args.seeds = args.seeds or ("0" if args.quick else "0,1,2")
    args.eps = args.eps or ("1,3" if args.quick else "1,3,10")
    if args.csv and not args.label:
        p.error("--csv needs --label COL")
    args.eps_list = [float(e) for e in args.eps.split(",") if e.strip()]
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "none"]
    if not args.method_list and not args.reuse and not args.render:
        p.error("--methods none only makes sense with --reuse (it merges earlier runs without training anything)")
    bad = [m for m in args.method_list if m not in ALL_METHODS]
    if bad:
        p.error(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(ALL_METHODS)}")
    return args


# ---- machine -----------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    vers = {}
    for pkg in ("torch", "opacus", "pandas", "numpy", "scikit-learn", "synthehr"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": vers,
        "loadavg_start": list(os.getloadavg()),
    }


# ---- peer venvs --------------------------------------------------------------------------------
def _req_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def ensure_venv(name: str, venv_root: Path, *, skip_install: bool, deadline: float) -> tuple[Path | None, str | None]:
    """The python of peer venv `name`, creating/updating it from its requirements file. Returns (python, error)."""
    venv = venv_root / name
    py = venv / "bin" / "python"
    marker = venv / ".benchmark-installed"
    want = _req_hash(REQUIREMENTS[name])
    if py.exists() and marker.exists() and marker.read_text().strip() == want:
        return py, None
    if skip_install:
        return None, f"venv {venv} missing or out of date and --skip-install given"
    if time.time() > deadline:
        return None, "time budget exhausted before the venv could be installed"
    venv_root.mkdir(parents=True, exist_ok=True)
    log_path = venv_root / f"{name}-install.log"
    log(f"creating peer venv {venv} (log: {log_path})")
    t0 = time.time()
    with open(log_path, "w", encoding="utf-8") as fh:
        try:
            if not py.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=fh, stderr=subprocess.STDOUT)
            subprocess.run([str(py), "-m", "pip", "install", "-r", str(REQUIREMENTS[name])], check=True, stdout=fh,
                           stderr=subprocess.STDOUT, timeout=max(60.0, deadline - time.time()))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            return None, f"installing the {name} venv failed ({type(exc).__name__}); see {log_path}"
    marker.write_text(want)
    log(f"venv {name} ready in {time.time() - t0:.0f} s")
    return py, None


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONHASHSEED"] = "0"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def run_peer_batch(py: Path, runner: Path, spec: dict[str, Any], work: Path, tag: str, *, threads: int,
                   timeout: float) -> dict[str, dict[str, Any]]:
    """Run a peer runner on a spec; return job id -> result JSON (missing results become errors)."""
    spec_path = work / f"{tag}-spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    log_path = work / f"{tag}.log"
    with open(log_path, "w", encoding="utf-8") as fh:
        try:
            subprocess.run([str(py), str(runner), str(spec_path)], stdout=fh, stderr=subprocess.STDOUT,
                           env=_child_env(threads), timeout=timeout, cwd=str(runner.parent))
            failure = None
        except subprocess.TimeoutExpired:
            failure = f"peer process killed after {timeout:.0f} s"
    out: dict[str, dict[str, Any]] = {}
    for job in spec["jobs"]:
        p = Path(job["out_json"])
        if p.exists():
            out[job["id"]] = json.loads(p.read_text())
        else:
            out[job["id"]] = {"status": "error", "error": failure or "peer process exited without a result (crash?)"}
    return out


# ---- synthehr (in-process) ---------------------------------------------------------------------
def run_synthehr(train: pd.DataFrame, schema: Any, label: str, *, eps: float, delta: float, seed: int,
                 epochs: int | None, cap: int, batch_size: int | None, n_sample: int, n_throughput: int, threads: int) -> tuple[dict[str, Any], pd.DataFrame | None]:
    try:
        from synthehr.tools.engines.dpgan import train_dpgan
    except ImportError as exc:
        return {"status": "error", "error": f"synthehr engine not available ({exc})"}, None
    settings = None
    share: dict[str, float] = {}
    try:
        from synthehr.configs.settings import Settings, TrainingSettings

        settings = TrainingSettings(threads=threads)
        # the share of epsilon a user's training spends on the DP tables (configs default), not the engine's
        share = {"preprocessing_share": Settings().privacy.preprocessing_share}
    except Exception:  # noqa: BLE001 - older config without the section: engine defaults
        settings = None
    # The engine's own epoch default, capped at the common GAN cap (unless --synthehr-epochs says).
    if epochs is None:
        engine_default = getattr(settings, "epochs", None)
        epochs = min(int(engine_default), cap) if engine_default else cap
    import warnings

    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gen = train_dpgan(train, schema, target_epsilon=eps, target_delta=delta, conditions=[label], epochs=epochs,
                              batch_size=batch_size, seed=seed, accountant="prv", settings=settings, **share)
        fit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        synth = gen.sample(n_sample, seed=seed)
        sample_seconds = time.perf_counter() - t0
        tp_seconds = None
        if n_throughput:
            t0 = time.perf_counter()
            gen.sample(n_throughput, seed=seed + 10_000)
            tp_seconds = time.perf_counter() - t0
        hp = getattr(gen, "hyperparameters", {}) or {}
        from importlib.metadata import version

        return {
            "status": "ok",
            "fit_seconds": fit_seconds,
            "sample_seconds": sample_seconds,
            "sample_rows": len(synth),
            "throughput_seconds": tp_seconds,
            "throughput_rows": n_throughput,
            "epochs_run": float(hp.get("epochs", epochs)),
            "reported_epsilon": float(gen.epsilon),
            "reported_delta": float(gen.delta),
            "epsilon_note": f"engine ledger: preprocessing + DP-SGD ({getattr(gen, 'accountant', 'prv')} accountant)",
            "epsilon_preprocessing": (getattr(gen, "privacy_details", {}) or {}).get("epsilon_preprocessing"),
            "preprocessing_share": hp.get("preprocessing_share"),
            # DP-SGD (adversarial) phase alone, without the one-off structure measurement and GEM pretraining
            "adversarial_seconds": max(1e-9, (getattr(gen, "privacy_details", {}) or {}).get("seconds", 0.0)
                                       - ((getattr(gen, "privacy_details", {}) or {}).get("seconds_pretrain") or 0.0)),
            "batch_size": hp.get("batch_size"),
            "versions": {"synthehr": version("synthehr"), "torch": version("torch"), "opacus": version("opacus")},
            "train_rows": len(train),
        }, synth
    except Exception as exc:  # noqa: BLE001 - record and go on with the other methods
        traceback.print_exception(type(exc), exc, exc.__traceback__, limit=3, file=sys.stderr)
        return {"status": "error", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}, None


# ---- the run -----------------------------------------------------------------------------------
def _read_synth_csv(path: Path, spec: list[dict[str, Any]]) -> pd.DataFrame:
    dtypes = {c["name"]: str for c in spec if c["type"] == "categorical"}
    return pd.read_csv(path, dtype=dtypes)


def _finish_record(rec: dict[str, Any], result: dict[str, Any]) -> None:
    rec.update({k: v for k, v in result.items() if k not in ("id", "method")})
    n = rec.get("train_rows") or 0
    if rec.get("status") == "ok":
        fit = rec.get("fit_seconds") or float("nan")
        ep = rec.get("epochs_run")
        rec["row_epochs_per_s"] = (n * ep / fit) if ep and fit and fit > 0 else None
        adv = rec.get("adversarial_seconds")
        rec["row_epochs_per_s_dpsgd"] = (n * ep / adv) if ep and adv else None
        tp, tps = rec.get("throughput_rows"), rec.get("throughput_seconds")
        rec["sample_rows_per_s"] = (tp / tps) if tp and tps else None
    eps_rep, target = rec.get("reported_epsilon"), rec.get("target_epsilon")
    rec["overshoot"] = bool(eps_rep is not None and target is not None and eps_rep > target + 1e-9)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import data as bdata
    from benchmarks import metrics

    if args.nice:
        try:
            cur = os.nice(0)
            if cur < args.nice:
                os.nice(args.nice - cur)
        except OSError:
            pass
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    started = time.time()
    deadline = started + args.time_budget_min * 60
    if args.stop_at:
        hh, mm = (int(x) for x in args.stop_at.split(":"))
        now = datetime.now()
        stop = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
        deadline = min(deadline, stop if stop > now.timestamp() else stop + 86400)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ("-csv" if args.csv else "")
    machine = machine_info()

    if args.csv:
        datasets = [bdata.load_csv(args.csv, args.label, meta=args.meta)]
    else:
        datasets = [bdata.load(n.strip()) for n in args.datasets.split(",") if n.strip()]

    venvs: dict[str, Path | None] = {}
    venv_errors: dict[str, str] = {}
    for m in args.method_list:
        v = PEER_VENV.get(m)
        if v and v not in venvs:
            py, err = ensure_venv(v, Path(args.venv_dir), skip_install=args.skip_install, deadline=deadline)
            venvs[v] = py
            if err:
                venv_errors[v] = err
                log(err)

    records: list[dict[str, Any]] = []
    solo: dict[str, Any] | None = None
    trtr_records: list[dict[str, Any]] = []
    ds_info: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="synthehr-bench-"))
    try:
        for ds in datasets:
            ds_info.append({
                "name": ds.name, "description": ds.description, "rows_with_label": ds.rows_before,
                "rows_complete": len(ds.frame), "columns": ds.spec, "label": ds.label,
                "positive_rate": float(ds.frame[ds.label].astype(float).mean()), "notes": ds.notes,
            })
            log(f"{ds.name}: {len(ds.frame)} complete rows x {len(ds.spec)} columns")
        # Seeds outermost: if the time budget runs out, every data set and method has its first seeds.
        for seed in args.seed_list:
            for ds in datasets:
                spec = ds.spec
                train, holdout = bdata.split(ds, seed, args.holdout)
                n_train = len(train)
                delta = 1.0 / (max(n_train, 2) ** 1.1)
                # Peers' batch: their default 500, at most half the train rows (DP-CTGAN needs a sampling
                # rate < 1), a multiple of 10 (CTGAN's pac).
                peer_bs = max(10, min(args.batch_size, (n_train // 2) // 10 * 10))
                tr = metrics.trtr(train, holdout, spec, ds.label, seed=seed)
                trtr_records.append({"dataset": ds.name, "seed": seed, "train_rows": n_train, "holdout_rows": len(holdout),
                                     "trtr_lr": tr["lr"], "trtr_gb": tr["gb"], "trtr_mean": tr["mean"],
                                     "real_reversed": metrics.real_reversed(train, holdout, spec, ds.label)})
                train_csv = work / f"{ds.name}-s{seed}-train.csv"
                bdata.to_csv_frame(train, ds.schema).to_csv(train_csv, index=False)
                pending: list[tuple[dict[str, Any], pd.DataFrame | None]] = []

                def base_record(method: str, eps: float | None) -> dict[str, Any]:
                    return {"dataset": ds.name, "seed": seed, "method": method, "target_epsilon": eps,
                            "target_delta": delta if eps is not None else None, "train_rows": n_train}

                # peers: one subprocess per (venv, lane) per (data set, seed). Two lanes balance the wall
                # time: "bg" runs in a thread while synthehr trains, "fg" after synthehr in the main thread.
                peer_batches: list[tuple[str, str, list[dict[str, Any]]]] = []
                for venv_name, lane, lane_methods in PEER_LANES[args.workers]:
                    jobs = []
                    for m in [m for m in lane_methods if m in args.method_list]:
                        for eps in ([None] if m == "ctgan" else args.eps_list):
                            jid = f"{ds.name}-s{seed}-{m}-e{'inf' if eps is None else f'{eps:g}'}"
                            opts: dict[str, Any] = {}
                            if m in ("mst", "aim"):
                                opts["bins"] = args.bins
                            if m == "aim":
                                if args.aim_rounds:
                                    opts["rounds"] = args.aim_rounds
                                opts["round_iters"] = args.aim_round_iters
                            jobs.append({
                                "id": jid, "method": m, "epsilon": eps, "delta": delta,
                                "seed": seed, "n_sample": n_train, "n_throughput": args.throughput_rows,
                                "epochs": args.dpctgan_epochs if m == "dpctgan" else args.gan_epochs,
                                "batch_size": peer_bs, "options": opts,
                                "time_limit_s": args.peer_job_timeout,
                                "out_csv": str(work / f"{jid}.csv"), "out_json": str(work / f"{jid}.json"),
                                "_eps": eps,
                            })
                    if jobs:
                        peer_batches.append((venv_name, lane, jobs))
                peer_results: dict[str, dict[str, Any]] = {}

                def run_peers(lane: str, batches: list[tuple[str, str, list[dict[str, Any]]]] = peer_batches,
                              into: dict[str, dict[str, Any]] = peer_results, tag: str = f"{ds.name}-s{seed}",
                              train_csv: Path = train_csv, spec: list[dict[str, Any]] = spec, label: str = ds.label) -> None:
                    for venv_name, batch_lane, jobs in batches:
                        if batch_lane != lane:
                            continue
                        py = venvs.get(venv_name)
                        if py is None:
                            into.update({j["id"]: {"status": "error", "error": venv_errors.get(venv_name, "no venv")} for j in jobs})
                            continue
                        t0 = time.time()
                        peer_spec = {"train_csv": str(train_csv), "label": label, "threads": args.threads,
                                     "deadline_unix": deadline, "columns": spec,
                                     "jobs": [{k: v for k, v in j.items() if k != "_eps"} for j in jobs]}
                        timeout = min(args.peer_job_timeout * len(jobs) + 120,
                                      max(180.0, deadline - time.time() + args.peer_job_timeout + 60))
                        res = run_peer_batch(py, RUNNERS[venv_name], peer_spec, work, f"{tag}-{venv_name}-{jobs[0]['method']}",
                                             threads=args.threads, timeout=timeout)
                        into.update(res)
                        log(f"{tag} {venv_name}: " + ", ".join(
                            f"{j['method']}@{j['_eps'] if j['_eps'] is not None else 'inf'}={res[j['id']].get('status')}"
                            f" ({res[j['id']].get('fit_seconds') or 0:.0f} s)" for j in jobs) + f"; batch {time.time() - t0:.0f} s")

                threads_bg = [threading.Thread(target=run_peers, args=(lane,), daemon=True)
                              for lane in sorted({b[1] for b in peer_batches if b[1] != "fg"})]
                for t in threads_bg:
                    t.start()

                # synthehr, in-process
                if "synthehr" in args.method_list:
                    for eps in args.eps_list:
                        rec = base_record("synthehr", eps)
                        if time.time() > deadline:
                            _finish_record(rec, {"status": "skipped", "error": "time budget exhausted"})
                            pending.append((rec, None))
                            continue
                        t0 = time.time()
                        result, synth = run_synthehr(
                            train, ds.schema, ds.label, eps=eps, delta=delta, seed=seed, epochs=args.synthehr_epochs,
                            cap=args.gan_epochs, batch_size=args.synthehr_batch_size, n_sample=n_train, n_throughput=args.throughput_rows,
                            threads=args.threads)
                        _finish_record(rec, result)
                        log(f"{ds.name} seed {seed} eps {eps:g} synthehr: {rec['status']} ({time.time() - t0:.0f} s)")
                        pending.append((rec, synth))

                run_peers("fg")
                for t in threads_bg:
                    t.join()
                for _venv_name, _lane, jobs in peer_batches:
                    for j in jobs:
                        rec = base_record(j["method"], j["_eps"])
                        _finish_record(rec, peer_results.get(j["id"], {"status": "error", "error": "no result"}))
                        synth = None
                        if rec.get("status") == "ok" and Path(j["out_csv"]).exists():
                            synth = _read_synth_csv(Path(j["out_csv"]), spec)
                        pending.append((rec, synth))

                for rec, synth in pending:
                    if synth is not None:
                        try:
                            rec.update(metrics.evaluate(synth, train, holdout, spec, ds.label, seed=seed))
                            rec["tstr_over_trtr"] = rec["tstr_mean"] / tr["mean"] if tr["mean"] else None
                        except Exception as exc:  # noqa: BLE001
                            rec["status"] = "error"
                            rec["error"] = f"metrics failed: {type(exc).__name__}: {str(exc)[:200]}"
                    records.append(rec)
                train_csv.unlink(missing_ok=True)

        if args.solo_throughput and "synthehr" in args.method_list and datasets:
            solo = _solo_throughput(args, datasets[0], deadline)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # holds real training rows: never keep it

    reused_from = None
    if args.reuse:
        names = {d["name"] for d in ds_info}
        taken: set[tuple[Any, ...]] = set()  # (method, data set, seed, eps) already in the result
        sources = []
        for path in [x.strip() for x in args.reuse.split(",") if x.strip()]:
            prev = json.loads(Path(path).read_text())
            kept = []
            for r in prev["runs"]:
                key = (r["method"], r["dataset"], r["seed"], r["target_epsilon"])
                if (r["method"] in args.method_list or key in taken or r["dataset"] not in names or r["seed"] not in args.seed_list
                        or not (r["target_epsilon"] is None or r["target_epsilon"] in args.eps_list)):
                    continue
                taken.add(key)
                kept.append(r)
            fresh = {r["method"] for r in kept}
            records.extend(kept)
            sources.append({"run_id": prev.get("run_id"), "date_utc": prev.get("date_utc"), "runs": len(kept),
                            "methods": sorted({r["method"] for r in kept}), "machine": prev.get("machine"),
                            "settings": prev.get("settings")})
            log(f"reused {len(kept)} runs of {', '.join(sorted(fresh)) or 'no other method'} from {path}")
        first = sources[0]
        reused_from = {"run_id": ", ".join(str(x["run_id"]) for x in sources),
                       "date_utc": ", ".join(str(x["date_utc"]) for x in sources),
                       "runs": sum(x["runs"] for x in sources), "machine": first["machine"],
                       "settings": next((x["settings"] for x in sources if x["methods"] and set(x["methods"]) & set(DP_PEERS)),
                                        first["settings"]),
                       "sources": sources}

    machine["loadavg_end"] = list(os.getloadavg())
    finished = time.time()
    result = {
        "run_id": run_id,
        "date_utc": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": finished - started,
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "machine": machine,
        "settings": {
            "eps": args.eps_list, "seeds": args.seed_list, "methods": args.method_list, "gan_epochs": args.gan_epochs,
            "synthehr_epochs": args.synthehr_epochs or "engine default (capped)",
            "batch_size_peers": args.batch_size, "synthehr_batch_size": args.synthehr_batch_size,
            "aim_rounds": args.aim_rounds or "16 x number of columns (authors' default; a maximum)",
            "aim_round_iters": args.aim_round_iters, "dpctgan_epochs": args.dpctgan_epochs, "workers": args.workers, "bins": args.bins, "holdout": args.holdout,
            "throughput_rows": args.throughput_rows, "threads": args.threads, "time_budget_min": args.time_budget_min,
            "peer_job_timeout_s": args.peer_job_timeout,
            "delta": "1 / n_train^1.1 (same for every DP method)",
        },
        "datasets": ds_info,
        "venv_errors": venv_errors,
        "peer_versions": _peer_versions(records),
        "trtr": trtr_records,
        "runs": records,
        "solo_throughput": solo,
        "reused_from": reused_from,
    }
    if reused_from and reused_from.get("settings"):
        # Each peer setting comes from the run whose rows of that peer are shown.
        owner = {"aim_rounds": ("aim",), "aim_round_iters": ("aim",), "dpctgan_epochs": ("dpctgan",), "bins": ("mst", "aim")}
        for key in ("workers", "peer_job_timeout_s", "aim_rounds", "aim_round_iters", "dpctgan_epochs", "bins",
                    "batch_size_peers"):
            if any(m in args.method_list for m in owner.get(key, ())):
                continue  # this run trained that peer itself
            src = next((x["settings"] for x in reused_from["sources"] if x.get("settings")
                        and set(x["methods"]) & set(owner.get(key, DP_PEERS))), reused_from["settings"])
            result["settings"][key] = src.get(key, result["settings"].get(key))
        for meth, pv in (_peer_versions([r for r in records if r["method"] not in args.method_list])).items():
            result["peer_versions"].setdefault(meth, pv)
    result["summary"] = summarise(result)
    return result


def _solo_throughput(args: argparse.Namespace, ds: Any, deadline: float) -> dict[str, Any] | None:
    """One synthehr fit + sampling with nothing else of this benchmark running (cleaner timing)."""
    from benchmarks import data as bdata

    if time.time() > deadline:
        return {"status": "skipped", "error": "time budget exhausted"}
    seed = args.seed_list[0]
    eps = 3.0 if 3.0 in args.eps_list else args.eps_list[0]
    train, _ = bdata.split(ds, seed, args.holdout)
    load0 = list(os.getloadavg())
    t0 = time.time()
    result, _synth = run_synthehr(train, ds.schema, ds.label, eps=eps, delta=1.0 / (max(len(train), 2) ** 1.1), seed=seed,
                                  epochs=args.synthehr_epochs, cap=args.gan_epochs, batch_size=args.synthehr_batch_size, n_sample=len(train),
                                  n_throughput=args.throughput_rows, threads=args.threads)
    rec = {"dataset": ds.name, "seed": seed, "method": "synthehr", "target_epsilon": eps, "train_rows": len(train),
           "loadavg_before": load0, "loadavg_after": list(os.getloadavg())}
    _finish_record(rec, result)
    log(f"solo synthehr throughput on {ds.name}: {rec.get('status')} ({time.time() - t0:.0f} s)")
    return {k: rec.get(k) for k in ("dataset", "seed", "target_epsilon", "train_rows", "status", "error", "fit_seconds",
                                     "epochs_run", "row_epochs_per_s", "sample_rows_per_s", "throughput_rows",
                                     "loadavg_before", "loadavg_after")}


def _peer_versions(records: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for r in records:
        if r.get("versions") and r["method"] not in out:
            out[r["method"]] = r["versions"]
    return out


# ---- aggregation -------------------------------------------------------------------------------
AGG_KEYS = ("tstr_lr", "tstr_gb", "tstr_mean", "tstr_over_trtr", "fidelity", "corr_diff", "dcr_train_median",
            "dcr_holdout_median", "dcr_ratio", "share_closer_to_train", "exact_match_rate", "fit_seconds",
            "row_epochs_per_s", "sample_rows_per_s", "reported_epsilon", "epochs_run", "synthetic_label_rate",
            "row_epochs_per_s_dpsgd", "pairs_tvd_mean", "pairs_tvd_worst", "top10_corr_err", "sign_agreement", "cohort_max_mean_diff_sd",
            "aim_rounds_run", "aim_label_cliques", "epochs_planned")


def _median(vals: list[Any]) -> float | None:
    v = [float(x) for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(v) if v else None


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians over seeds per (data set, method, target epsilon), TRTR medians and the team targets."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    # per (data set, seed): the predictors the real training split itself reverses (metrics.real_reversed)
    own = {(t["dataset"], t["seed"]): set(t["real_reversed"]) for t in result["trtr"] if "real_reversed" in t}
    for r in result["runs"]:
        groups.setdefault((r["dataset"], r["method"], r["target_epsilon"]), []).append(r)
    rows = []
    for (ds, method, eps), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "ok" and "tstr_mean" in r]
        row: dict[str, Any] = {"dataset": ds, "method": method, "target_epsilon": eps, "runs": len(rs), "ok": len(ok),
                               "errors": sorted({r.get("error", "") for r in rs if r.get("status") != "ok"})}
        for k in AGG_KEYS:
            row[k] = _median([r.get(k) for r in ok])
        worst = [r.get("tstr_mean") for r in ok if r.get("tstr_mean") is not None]
        row["tstr_mean_worst"] = min(worst) if worst else None  # the worst seed
        pt = [r.get("pairs_tvd_mean") for r in ok if r.get("pairs_tvd_mean") is not None]
        row["pairs_tvd_mean_worst"] = max(pt) if pt else None
        row["reversed_predictors"] = sorted({p for r in ok for p in (r.get("reversed_predictors") or [])})
        # top-5 predictors whose sign the real holdout does not determine (not counted; fidelity.predictor_signs)
        row["undetermined_predictors"] = sorted({p for r in ok for p in (r.get("undetermined_predictors") or [])})
        row["reversed_marginal"] = sorted({p for r in ok for p in (r.get("reversed_marginal") or [])})
        if own:
            row["reversed_beyond_real"] = sorted({p for r in ok for p in (r.get("reversed_predictors") or [])
                                                  if p not in own.get((ds, r["seed"]), set())})
            row["reversed_by_real_too"] = sorted(set(row["reversed_predictors"]) - set(row["reversed_beyond_real"]))
        reps = [r["reported_epsilon"] for r in ok if r.get("reported_epsilon") is not None]
        row["reported_epsilon_max"] = max(reps) if reps else None
        row["overshoot_runs"] = sum(1 for r in rs if r.get("overshoot"))
        rows.append(row)
    trtr: dict[str, dict[str, Any]] = {}
    for ds in {t["dataset"] for t in result["trtr"]}:
        ts = [t for t in result["trtr"] if t["dataset"] == ds]
        trtr[ds] = {k: _median([t[k] for t in ts]) for k in ("trtr_lr", "trtr_gb", "trtr_mean", "train_rows", "holdout_rows")}
    targets = issue11_targets(rows) + check_targets(rows, trtr, result.get("solo_throughput"))
    return {"rows": rows, "trtr": trtr, "targets": targets}


def issue11_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 11's comparative targets on every data set with synthehr rows (medians over seeds):
    TSTR >= the best DP peer's at eps 1 and 3, no seed below 0.5 and no reversed top-5 predictor at
    eps >= 1 (partial effects whose sign the real holdout determines, and marginal associations), all-pairs
    2-way TVD <= AIM's at eps 1."""
    out: list[dict[str, Any]] = []
    for ds in sorted({r["dataset"] for r in rows if r["method"] == "synthehr"}):
        for eps in (1.0, 3.0):
            s = _row(rows, ds, "synthehr", eps)
            peers = [r for m in DP_PEERS if (r := _row(rows, ds, m, eps)) and r.get("tstr_mean") is not None]
            if s and peers:
                best = max(peers, key=lambda r: r["tstr_mean"])
                out.append({"target": f"{ds}: TSTR AUROC at eps={eps:g} >= best DP peer", "value": s["tstr_mean"],
                            "threshold": best["tstr_mean"], "detail": f"best peer {METHOD_LABELS[best['method']]}",
                            "pass": (s["tstr_mean"] or 0) >= best["tstr_mean"]})
        mine = [r for r in rows if r["dataset"] == ds and r["method"] == "synthehr" and r["ok"]
                and r["target_epsilon"] is not None and r["target_epsilon"] >= 1]
        worst = [r["tstr_mean_worst"] for r in mine if r.get("tstr_mean_worst") is not None]
        if worst:
            out.append({"target": f"{ds}: no synthehr seed with TSTR AUROC < 0.5 at eps >= 1", "value": min(worst),
                        "threshold": 0.5, "detail": "worst seed over every eps >= 1", "pass": min(worst) >= 0.5})
        if mine:
            rev = sorted({p for r in mine for p in (r.get("reversed_predictors") or [])})
            und = sorted({p for r in mine for p in (r.get("undetermined_predictors") or [])})
            out.append({"target": f"{ds}: no reversed top-5 predictor at eps >= 1", "value": len(rev), "threshold": 0,
                        "detail": (", ".join(rev) or "none") + (f" (sign not determined by the real holdout, not "
                                                                f"counted: {', '.join(und)})" if und else ""),
                        "pass": not rev})
            if all("reversed_marginal" in r for r in mine):
                mrev = sorted({p for r in mine for p in r["reversed_marginal"]})
                out.append({"target": f"{ds}: no reversed top-5 marginal association with the label at eps >= 1",
                            "value": len(mrev), "threshold": 0, "detail": ", ".join(mrev) or "none", "pass": not mrev})
            if all("reversed_beyond_real" in r for r in mine):
                beyond = sorted({p for r in mine for p in r["reversed_beyond_real"]})
                also = sorted(set(rev) - set(beyond))
                out.append({"target": f"{ds}: no reversed top-5 predictor at eps >= 1 beyond those the real training "
                                      "split itself reverses", "value": len(beyond), "threshold": 0,
                            "detail": (", ".join(beyond) or "none") + (f" (reversed by the real training split too: "
                                                                        f"{', '.join(also)})" if also else ""),
                            "pass": not beyond})
        s1, a1 = _row(rows, ds, "synthehr", 1.0), _row(rows, ds, "aim", 1.0)
        if s1 and a1 and s1.get("pairs_tvd_mean") is not None and a1.get("pairs_tvd_mean") is not None:
            out.append({"target": f"{ds}: all-pairs 2-way TVD at eps=1 <= AIM's", "value": s1["pairs_tvd_mean"],
                        "threshold": a1["pairs_tvd_mean"], "detail": "median over seeds, vs the real holdout",
                        "pass": s1["pairs_tvd_mean"] <= a1["pairs_tvd_mean"]})
    return out


def _reversed_words(r: dict[str, Any]) -> str:
    """Reversed predictors (any seed); those the real training split reverses too are marked with *."""
    also = set(r.get("reversed_by_real_too") or [])
    words = ", ".join(p + ("*" if p in also else "") for p in (r.get("reversed_predictors") or [])) or "none"
    if r.get("undetermined_predictors"):
        words += f" (sign not determined by the real data, not counted: {', '.join(r['undetermined_predictors'])})"
    return words


def _row(rows: list[dict[str, Any]], ds: str, method: str, eps: float) -> dict[str, Any] | None:
    for r in rows:
        if r["dataset"] == ds and r["method"] == method and r["target_epsilon"] == eps and r["ok"]:
            return r
    return None


def check_targets(rows: list[dict[str, Any]], trtr: dict[str, dict[str, Any]],
                  solo: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The team's targets, measured on NHANES T2D (medians over seeds; TSTR = mean of LR and GB AUROC)."""
    ds = "nhanes-t2d" if any(r["dataset"] == "nhanes-t2d" for r in rows) else (rows[0]["dataset"] if rows else None)
    out: list[dict[str, Any]] = []
    if ds is None:
        return out
    s3 = _row(rows, ds, "synthehr", 3.0)
    if s3 and ds in trtr and trtr[ds]["trtr_mean"]:
        thr = 0.93 * trtr[ds]["trtr_mean"]
        out.append({"target": f"{ds}: TSTR AUROC at eps=3 >= 0.93 x TRTR", "value": s3["tstr_mean"], "threshold": thr,
                    "detail": f"TRTR {trtr[ds]['trtr_mean']:.3f}; median per-seed ratio {s3['tstr_over_trtr']:.3f}"
                    if s3["tstr_over_trtr"] is not None else "", "pass": (s3["tstr_mean"] or 0) >= thr})
    srows = [r for r in rows if r["dataset"] == ds and r["method"] == "synthehr" and r["ok"]]
    if srows:
        tp = _median([r["row_epochs_per_s"] for r in srows])
        sp = _median([r["sample_rows_per_s"] for r in srows])
        solo_ok = bool(solo and solo.get("status") == "ok" and solo.get("dataset") == ds)
        if solo_ok and solo.get("row_epochs_per_s"):
            tp = solo["row_epochs_per_s"]
            tp_note = (f"solo fit (no peer running), eps={solo['target_epsilon']:g}; wall time of train_dpgan incl. "
                       f"encoding and calibration; median of the concurrent runs {_big(_median([r['row_epochs_per_s'] for r in srows]))}")
        else:
            tp_note = "median over eps and seeds, concurrent with peers; wall time of train_dpgan incl. encoding and calibration"
        if solo_ok and solo.get("sample_rows_per_s"):
            sp = solo["sample_rows_per_s"]
            sp_note = f"solo draw of {solo.get('throughput_rows') or 0:,} rows; median of the concurrent runs {_big(_median([r['sample_rows_per_s'] for r in srows]))}"
        else:
            sp_note = "median over eps and seeds, concurrent with peers"
        if tp is not None:
            out.append({"target": f"{ds}: synthehr training >= 5,000 row-epochs/s", "value": tp, "threshold": 5000.0,
                        "detail": tp_note, "pass": tp >= 5000})
        if sp is not None:
            out.append({"target": f"{ds}: synthehr sampling >= 200,000 rows/s", "value": sp, "threshold": 200000.0,
                        "detail": sp_note, "pass": sp >= 200000})
        over = sum(r["overshoot_runs"] for r in srows)
        out.append({"target": f"{ds}: synthehr reported epsilon <= target (every run)", "value": over, "threshold": 0,
                    "detail": "runs over target", "pass": over == 0})
    return out


# ---- Markdown ----------------------------------------------------------------------------------
def _f(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{nd}f}"


def _pre_share(result: dict[str, Any]) -> str:
    shares = sorted({r.get("preprocessing_share") for r in result["runs"] if r["method"] == "synthehr" and r.get("preprocessing_share") is not None})
    return ", ".join(f"{x:.0%}" for x in shares) if shares else "a share (engine default)"


def _eps(x: Any) -> str:
    return "∞ (no DP)" if x is None else f"{x:g}"


def _big(x: Any) -> str:
    return "–" if x is None else f"{x:,.0f}"


def render_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    s = result["settings"]
    v = m.get("versions", {})
    lines = [
        "# synthehr benchmark results",
        "",
        f"Generated by `{result['command']}` (run `{result['run_id']}`), started {result['date_utc']}, "
        f"wall time {result['wall_seconds'] / 60:.1f} min.",
        "",
        f"- Machine: {m['cores']} cores, {m['cpu_model']}, {m['platform']}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['loadavg_start'])}, at end {', '.join(f'{x:.1f}' for x in m.get('loadavg_end', []))} "
        "(the machine is shared: timings are indicative).",
        f"- Project venv: Python {m['python']}, torch {v.get('torch')}, opacus {v.get('opacus')}, pandas {v.get('pandas')}, "
        f"scikit-learn {v.get('scikit-learn')}, synthehr {v.get('synthehr')}.",
    ]
    by_venv: dict[str, tuple[list[str], dict[str, str]]] = {}
    for meth, pv in result.get("peer_versions", {}).items():
        if meth in PEER_VENV:
            by_venv.setdefault(PEER_VENV[meth], ([], pv))[0].append(METHOD_LABELS.get(meth, meth))
    for venv_name, (labels, pv) in by_venv.items():
        lines.append(f"- `{venv_name}` venv ({', '.join(labels)}): " + ", ".join(f"{k} {val}" for k, val in pv.items()))
    lines += [
        f"- Settings: target ε {', '.join(_f(e, 0) for e in s['eps'])}; seeds {', '.join(map(str, s['seeds']))} "
        f"(seed s fixes the stratified {1 - s['holdout']:.0%}/{s['holdout']:.0%} split and every method's seed); "
        f"δ = {s['delta']}; GAN epoch cap {s['gan_epochs']} (CTGAN runs it; synthehr runs "
        f"{s.get('synthehr_epochs', 'its engine default')}, see the epochs column); peers' batch min({s['batch_size_peers']}, n_train/2); "
        f"synthehr batch {s['synthehr_batch_size'] or 'engine default'}; "
        f"DP-CTGAN: σ = 5 (SmartNoise's default), the most epochs whose ε stays within the target, at most "
        f"{s.get('dpctgan_epochs', s['gan_epochs'])}; "
        f"peer fits capped at {s.get('peer_job_timeout_s', '–')} s each; AIM rounds {s['aim_rounds']}"
        + (f", warm-started estimation with {s['aim_round_iters']} iterations per round" if s.get("aim_round_iters") else "")
        + f"; MST/AIM {s['bins']} equal-width bins per numeric column over the public bounds"
        + ("" if not s.get("aim_round_iters") else ", values drawn uniformly within the sampled bin")
        + f"; {s['threads']} thread(s) per method"
        + (f"; {s.get('workers')} concurrent lanes (with 4: synthehr then CTGAN | DP-CTGAN | MST | AIM), so methods share "
           "the 2 cores with each other and with other users; see the solo synthehr timing for an uncontended figure."
           if (s.get("workers") or 1) > 1 else "; methods ran one at a time."),
        "- Cells are medians over seeds. TSTR = train on synthetic, test on the real holdout; TRTR = train on real train. "
        "LR = logistic regression, GB = histogram gradient boosting; TSTR/TRTR uses the mean of LR and GB. "
        "Fidelity = mean over columns of 1−KS (numeric) or 1−TVD (categorical), vs real train; corr Δ = mean |Δ Pearson| "
        "over numeric/binary pairs. DCR = median distance to the closest real record, synthetic→train over "
        "synthetic→holdout (≈1: no memorisation); 'closer' = share of synthetic rows nearer train than holdout (≈0.5 ideal). "
        "Row-epochs/s = train rows × epochs run / training wall time; sampling rows/s from a separate draw of "
        f"{s['throughput_rows']:,} rows.",
        "",
    ]
    reused = result.get("reused_from")
    if reused:
        rm = reused.get("machine") or {}
        lines += [f"- Rows of {', '.join(METHOD_LABELS.get(m, m) for m in sorted({r['method'] for r in result['runs']} - set(s['methods'])))} "
                  f"are reused from run `{reused['run_id']}` ({reused['date_utc']}; same data, seeds and splits; load average "
                  f"then {', '.join(f'{x:.1f}' for x in rm.get('loadavg_start', []))}); "
                  + (f"only {', '.join(s['methods'])} ran in this run. " if s['methods'] else "nothing was trained in this run (a merge). ")
                  + "Quality metrics compare like for like; timings do not (different load and concurrency): compare "
                  "throughput only within one run.", "", ""]
    summary = result["summary"]
    if summary["targets"]:
        lines += ["## Team targets", "", "| target | measured | threshold | pass | note |", "|---|---|---|---|---|"]
        for t in summary["targets"]:
            val = t["value"]
            if isinstance(val, int):
                fmt = str
            else:
                fmt = _big if isinstance(val, (int, float)) and abs(val) >= 100 else _f
            lines.append(f"| {t['target']} | {fmt(val)} | {fmt(t['threshold'])} | {'PASS' if t['pass'] else 'FAIL'} | {t['detail']} |")
        lines.append("")
    solo = result.get("solo_throughput")
    if solo:
        if solo.get("status") == "ok":
            lines += [f"Solo synthehr timing ({solo['dataset']}, seed {solo['seed']}, ε {solo['target_epsilon']:g}, "
                      f"{solo['train_rows']:,} rows × {_f(solo['epochs_run'], 0)} epochs, nothing else of this benchmark running; "
                      f"load average {solo['loadavg_before'][0]:.1f} before, {solo['loadavg_after'][0]:.1f} after): "
                      f"training {_f(solo['fit_seconds'], 1)} s = {_big(solo['row_epochs_per_s'])} row-epochs/s; "
                      f"sampling {_big(solo['sample_rows_per_s'])} rows/s.", ""]
        else:
            lines += [f"Solo synthehr timing: {solo.get('status')} ({solo.get('error')}).", ""]
    for ds in result["datasets"]:
        name = ds["name"]
        tr = summary["trtr"].get(name, {})
        lines += [
            f"## {name}",
            "",
            f"{ds['description']}: {ds['rows_complete']:,} complete rows of {ds['rows_with_label']:,} with a label, "
            f"{len(ds['columns']) - 1} features, positive rate {ds['positive_rate']:.3f}; train {_big(tr.get('train_rows'))} / "
            f"holdout {_big(tr.get('holdout_rows'))} rows." + (" " + "; ".join(ds["notes"]) + "." if ds["notes"] else ""),
            "",
            f"TRTR AUROC (real → real): LR {_f(tr.get('trtr_lr'))}, GB {_f(tr.get('trtr_gb'))}, mean {_f(tr.get('trtr_mean'))}.",
            "",
            "| method | ε target | ε reported (max) | over target | TSTR LR | TSTR GB | TSTR/TRTR | fidelity | corr Δ | DCR tr/ho | closer | train s | row-epochs/s | sample rows/s | epochs | ok |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = [r for r in summary["rows"] if r["dataset"] == name]
        order = {m: i for i, m in enumerate(ALL_METHODS)}
        rows.sort(key=lambda r: (math.inf if r["target_epsilon"] is None else r["target_epsilon"], order.get(r["method"], 99)))
        for r in rows:
            lines.append(
                f"| {METHOD_LABELS.get(r['method'], r['method'])} | {_eps(r['target_epsilon'])} | {_f(r['reported_epsilon_max'])} | "
                f"{'**YES** (' + str(r['overshoot_runs']) + ')' if r['overshoot_runs'] else 'no'} | {_f(r['tstr_lr'])} | {_f(r['tstr_gb'])} | "
                f"{_f(r['tstr_over_trtr'])} | {_f(r['fidelity'])} | {_f(r['corr_diff'])} | {_f(r['dcr_ratio'], 2)} | "
                f"{_f(r['share_closer_to_train'], 2)} | {_f(r['fit_seconds'], 1)} | {_big(r['row_epochs_per_s'])} | "
                f"{_big(r['sample_rows_per_s'])} | {_f(r['epochs_run'], 1)} | {r['ok']}/{r['runs']} |"
            )
        lines += ["", "Structure (issue 11; vs the real holdout; medians over seeds, worst seed in brackets):", "",
                  "| method | ε target | TSTR mean (worst seed) | all-pairs 2-way TVD mean (worst seed) | worst pair TVD | "
                  "top-10 corr error | top-5 sign agreement | reversed predictors (any seed; * the real training split reverses it too) | "
                  "cohort max mean diff (SD) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {METHOD_LABELS.get(r['method'], r['method'])} | {_eps(r['target_epsilon'])} | {_f(r['tstr_mean'])} "
                f"({_f(r.get('tstr_mean_worst'))}) | {_f(r.get('pairs_tvd_mean'))} ({_f(r.get('pairs_tvd_mean_worst'))}) | "
                f"{_f(r.get('pairs_tvd_worst'))} | {_f(r.get('top10_corr_err'))} | {_f(r.get('sign_agreement'), 2)} | "
                f"{_reversed_words(r)} | {_f(r.get('cohort_max_mean_diff_sd'), 2)} |")
        aim_rows = [r for r in rows if r["method"] == "aim" and r.get("aim_rounds_run") is not None]
        if aim_rows:
            lines += ["", "AIM rounds run / selected cliques containing the label (medians over seeds): " + "; ".join(
                f"ε {_eps(r['target_epsilon'])}: {_f(r['aim_rounds_run'], 0)} / {_f(r['aim_label_cliques'], 0)}" for r in aim_rows) + "."]
        errs = [(r, e) for r in rows for e in r["errors"] if e]
        if errs:
            lines += ["", "Failed or skipped runs:", ""]
            for r, e in errs:
                lines.append(f"- {METHOD_LABELS.get(r['method'], r['method'])} ε={_eps(r['target_epsilon'])}: {e}")
        lines.append("")
    if result.get("venv_errors"):
        lines += ["## Peer installation problems", ""] + [f"- {k}: {e}" for k, e in result["venv_errors"].items()] + [""]
    lines += [
        "## Notes",
        "",
        "- ε reported: synthehr's ledger total (DP preprocessing + DP-SGD, PRV accountant); DP-CTGAN's opacus 0.14 RDP "
        "epsilon read after its last step (SmartNoise checks the budget only at the start of an epoch, so it can pass the "
        "target, and its accountant assumes Poisson sampling that its conditional batch sampler does not do); MST/AIM are "
        "calibrated to (ε, δ) by construction; CTGAN is not private (ε = ∞).",
        "- DP-CTGAN runs the most epochs whose RDP ε (its own accountant) stays within the target, up to its epoch cap "
        "(σ = 5, SmartNoise's default); the epochs column shows how many that was. Runs older than this rule "
        "(GAN cap 30, SmartNoise's stop-after-passing check) could overshoot or stop short.",
        "- Peers get the same public bounds and categories as synthehr and spend no budget on preprocessing; "
        f"synthehr spends {_pre_share(result)} of ε on its DP tables (OpenDP zCDP marginals) before DP-SGD, included in its reported ε.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out_dir: Path, results_md: Path | None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    # Two runs started in the same second (e.g. peers split over two processes) must not overwrite each other.
    base, k = result["run_id"], 1
    while (out_dir / f"{result['run_id']}.json").exists():
        k += 1
        result["run_id"] = f"{base}-{k}"
    jpath = out_dir / f"{result['run_id']}.json"
    jpath.write_text(json.dumps(_finite(result), indent=2, default=_json_default, allow_nan=False))
    paths.append(jpath)
    md = render_markdown(result)
    mpath = out_dir / f"{result['run_id']}.md"
    mpath.write_text(md)
    paths.append(mpath)
    if results_md is not None:
        results_md.write_text(md)
        paths.append(results_md)
    return paths


def _finite(o: Any) -> Any:
    """NaN/inf -> null so the JSON is strict."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        result["summary"] = summarise(result)
        md_path = Path(args.results_md) if args.results_md else Path(args.render).with_suffix(".md")
        md_path.write_text(render_markdown(result))
        print(md_path)
        return 0
    result = run(args)
    results_md = Path(args.results_md) if args.results_md else (HERE / "RESULTS.md" if not (args.quick or args.csv) else None)
    for p in write_outputs(result, Path(args.out_dir), results_md):
        print(p)
    for t in result["summary"]["targets"]:
        log(f"target {t['target']}: {'PASS' if t['pass'] else 'FAIL'} ({t['value']} vs {t['threshold']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
