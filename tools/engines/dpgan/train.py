"""DP training of the conditional GAN (engine v2: private structure + GEM-style marginal loss + DP-SGD).

Privacy (add/remove-one-record neighbours), two parts composed by basic sequential composition:
  1. structure, (epsilon_pre, delta_pre) with epsilon_pre = preprocessing_share * target and
     delta_pre = target_delta / 2: the joint histogram of the conditioning columns, the mandatory
     tables (every generated column x the first conditioning column) and AIM-style selected pairs, all
     measured by OpenDP's discrete Gaussian and selected by OpenDP's noisy max inside one zCDP budget
     rho (the largest rho whose OpenDP zCDP -> approx-DP conversion is <= epsilon_pre at delta_pre);
     see structure.py for the documented rules (bins, rounds, rho split);
  2. the discriminator trains with Opacus DP-SGD (per-sample clipping, Gaussian noise, Poisson
     sampling at rate batch / n_public), calibrated by `make_private_with_epsilon` to
     epsilon_sgd = target - epsilon_pre at delta_sgd = target_delta - delta_pre (PRV default, RDP option);
  3. the generator sees only the discriminator's output and the noisy tables (a differentiable
     marginal-matching loss, GEM-style: softmax outputs -> expected table cells): post-processing.
Total = epsilon_pre' (OpenDP conversion of the rho actually spent) + DP-SGD spent <= target (checked).

Randomness: every privacy draw is secure (OpenDP's CSPRNG for the tables; DP-SGD noise and Poisson
sampling from torch Generators seeded from os.urandom, never stored). The user's seed controls only
weight initialisation, latent noise and the synthetic condition vectors: retraining with the same
seed gives a different model, and the seed reproduces sampling from a saved model, never training.

Released with the model: the noisy tables' post-processed form (condition histogram), the generator,
the DP-SGD accountant's epsilon and generator-side losses. No loss or statistic of real rows (the
discriminator's loss on real batches is never recorded).

Row count: `n_public` (declared by the source's owner, e.g. NHANES' published count) sizes the
batches and the bins; without it the DP estimate of n from the condition histogram (already charged)
is used. Opacus' update scale uses it too.

Each discriminator step sees one Poisson batch of real records plus a FIXED number of generated
records (the expected batch size), so one real record's presence changes the clipped gradient sum
by at most max_grad_norm.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

from synthehr.progress import NullProgress, Progress
from synthehr.configs.settings import TrainingSettings
from synthehr.tools.engines.dpgan.encoding import TableEncoder
from synthehr.tools.engines.dpgan.model import TrainedGenerator, sampling_threads, torch_threads
from synthehr.tools.engines.dpgan.privacy import (rho_for_epsilon, secure_torch_generator, split_budget,
                                                  zcdp_to_epsilon)
from synthehr.tools.store.schema import SourceSchema

# Weight of the marginal-matching (L1, probabilities) loss against the adversarial loss in the
# adversarial phase, times settings.marginal_weight. A fixed constant, not tuned per data set.
GEM_WEIGHT = 5.0
PRETRAIN_LR = 1e-3


class PrivacyOverrun(RuntimeError):
    """The accountant reported more than the DP-SGD share even after recalibration (a bug, never reported)."""


def train_dpgan(
    frame: pd.DataFrame,
    schema: SourceSchema,
    *,
    target_epsilon: float,
    target_delta: float,
    conditions: list[str],
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    accountant: str = "prv",
    settings: TrainingSettings | None = None,
    preprocessing_share: float = 0.8,  # = configs privacy.preprocessing_share
    progress: Progress | None = None,
    n_public: int | None = None,
) -> TrainedGenerator:
    """Train a DP conditional GAN on `frame` (all rows are training rows: split a holdout off before).

    Returns a TrainedGenerator whose `.epsilon` (structure + DP-SGD spent) <= target_epsilon.
    n_public: the publicly declared number of training rows (None: a DP estimate is used).
    """
    import torch

    from synthehr.tools.engines.dpgan.coupling import fit_coupling
    from synthehr.tools.engines.dpgan.structure import fine_bins, measure_structure

    if target_epsilon <= 0 or not math.isfinite(target_epsilon):
        raise ValueError("target_epsilon must be a positive number")
    if not 0 < target_delta < 1:
        raise ValueError("target_delta must be in (0, 1)")
    if accountant not in ("prv", "rdp"):
        raise ValueError("accountant must be 'prv' or 'rdp'")
    settings = settings or TrainingSettings()
    progress = progress or NullProgress()
    n = len(frame)
    if n < 10:
        raise ValueError(f"need at least 10 training records, got {n}")
    frame = frame[[c.name for c in schema.columns]]
    eps_pre, eps_sgd = split_budget(target_epsilon, preprocessing_share)
    delta_pre = float(target_delta) * 0.5 if eps_pre > 0 else 0.0
    delta_sgd = float(target_delta) - delta_pre
    # Bins follow the public n (or, without it, a public-free default of 1,000 until the DP estimate exists).
    n_rule = int(n_public) if n_public else 1000
    rho = rho_for_epsilon(eps_pre, delta_pre) if eps_pre > 0 else 0.0
    bins = int(settings.numeric_bins) or fine_bins(n_rule, target_epsilon)
    enc = TableEncoder(schema, list(conditions), bins)
    t_struct = time.perf_counter()
    structure_enc = enc if settings.marginal_weight > 0 else TableEncoder(schema, list(conditions), bins)
    if settings.marginal_weight <= 0:
        structure_enc.blocks = []  # only the condition histogram is measured
    struct, coder = measure_structure(frame, structure_enc, rho=rho, n_public=n_rule, epsilon=target_epsilon,
                                      fine=bins)
    eps_pre_spent = min(zcdp_to_epsilon(struct.rho, delta_pre), eps_pre) if struct.rho > 0 else 0.0
    t_struct = time.perf_counter() - t_struct
    n_est = float(n_public) if n_public else max(float(struct.total), 10.0)
    hist = struct.cond_joint if struct.cond_joint is not None else np.ones(enc.cond_sizes or [1])
    x_np, c_np = enc.encode(frame)

    epochs = int(epochs or settings.epochs)
    bs = int(batch_size or settings.batch_size)
    bs = max(1, min(bs, int(n_est)))
    threads = settings.threads
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="opacus")
        warnings.filterwarnings("ignore", message=".*(Full backward hook|Secure RNG|Optimal order).*")
        result = _calibrated(x_np, c_np, enc, hist, struct, coder, eps_sgd=eps_sgd, delta=delta_sgd, epochs=epochs,
                             batch_size=bs, n_est=n_est, seed=seed, accountant=accountant, settings=settings,
                             progress=progress, threads=threads, old_threads=old_threads)
    spent = float(result["spent"])
    total = eps_pre_spent + spent
    if not (spent <= eps_sgd + 1e-12 and total <= target_epsilon + 1e-9):  # never report above the target
        raise PrivacyOverrun(f"privacy accounting overran the target: {total} > {target_epsilon}")
    n_sel = sum(t.kind == "selected" for t in struct.tables)
    n_mand = sum(t.kind == "mandatory" for t in struct.tables)
    charges = [{
        "mechanism": "opendp-zcdp-marginals",
        "what": (f"{n_mand} column x {conditions[0] if conditions else 'nothing'} tables ({len(struct.measured) // 2} "
                 f"numeric ones derived from a pooled fine table plus a coarse x label table; the joint of the "
                 f"conditioning columns {', '.join(conditions) or 'none'} is fitted to them) and {n_sel} pairs chosen by the "
                 f"exponential mechanism (OpenDP discrete Gaussian + noisy max, rho {struct.rho:.4g}, "
                 f"zCDP -> approx-DP by OpenDP)"),
        "epsilon": eps_pre_spent, "delta": delta_pre,
    }] if struct.rho > 0 else []
    charges.append({"mechanism": f"dp-sgd-opacus-{accountant}", "what": "discriminator training (Poisson sampling)",
                    "epsilon": spent, "delta": delta_sgd})
    hp = {
        "epochs": epochs, "batch_size": bs, "max_grad_norm": settings.max_grad_norm,
        "generator_lr": settings.generator_lr, "discriminator_lr": settings.discriminator_lr,
        "noise_dim": settings.noise_dim, "hidden_dim": settings.hidden_dim,
        "generator_layers": settings.generator_layers, "discriminator_hidden_dim": settings.discriminator_hidden_dim,
        "discriminator_layers": settings.discriminator_layers, "generator_steps": settings.generator_steps,
        "discriminator_beta1": settings.discriminator_beta1, "gumbel_tau": settings.gumbel_tau,
        "numeric_bins": bins, "marginal_weight": settings.marginal_weight, "gem_weight": GEM_WEIGHT,
        "marginal_pretrain_steps": settings.marginal_pretrain_steps,
        "marginal_conditional": settings.marginal_conditional,
        "preprocessing_share": preprocessing_share, "n_public": int(n_public) if n_public else None,
        "n_rule": n_rule, "structure": struct.describe(),
    }
    details = {
        "epsilon_preprocessing": eps_pre_spent, "epsilon_preprocessing_share": eps_pre, "rho_preprocessing": struct.rho,
        "delta_preprocessing": delta_pre, "delta_dp_sgd": delta_sgd,
        "epsilon_dp_sgd": spent, "epsilon_dp_sgd_share": eps_sgd,
        "noise_multiplier": result["sigma"], "sample_rate": result["sample_rate"], "steps": result["steps"],
        "neighbouring": "add/remove one record", "seconds": result["seconds"],
        "seconds_structure": round(t_struct, 3), "seconds_pretrain": result["seconds_pretrain"],
        "randomness": ("privacy noise and Poisson sampling from secure sources (OpenDP CSPRNG; torch generators "
                       "seeded from os.urandom); the seed reproduces sampling from this model, never its training"),
    }
    # Coupled bin draws fitted to the released pair tables (post-processing; see coupling.py).
    t_couple = time.perf_counter()
    result["generator"].eval()
    hp["coupling"] = fit_coupling(result["generator"], enc, hist, hp["structure"], seed=seed)
    details["seconds_coupling"] = round(time.perf_counter() - t_couple, 3)
    return TrainedGenerator(result["generator"], enc, hist, epsilon=total, delta=float(target_delta),
                            target_epsilon=float(target_epsilon), target_delta=float(target_delta),
                            accountant=accountant, charges=charges, history=result["history"],
                            hyperparameters=hp, seed=seed, privacy_details=details,
                            released_marginals=released_from_structure(enc, struct, coder))


def released_from_structure(enc: TableEncoder, struct: Any, coder: Any) -> dict | None:
    """The column x label tables of the DP structure (already charged) in the form the model keeps for
    comparisons (synthehr.tools.engines.source_figures): per generated column, its post-processed counts per
    value of the first conditioning column over the public cells (numeric: the fine equal-width bins of the
    public range, then the missing cell). `signal` per row: 1 - the noise std of the row's total over its
    kept cells (noise std per cell x sqrt(kept cells)) divided by that total, so a row that noise could
    have made up is not read as the source's figure. Post-processing: no record is touched, nothing is charged."""
    first = enc.cond_blocks[0] if enc.cond_blocks else None
    if first is None or not struct.tables:
        return None
    blocks = {b.name: b for b in enc.blocks}
    columns: dict[str, dict] = {}
    for t in struct.tables:
        if t.kind != "mandatory" or len(t.cols) != 2 or t.cols[1] != first.name or t.cols[0] not in blocks:
            continue
        b = blocks[t.cols[0]]
        rows = np.clip(np.asarray(t.counts, dtype=float).T, 0, None)  # (label values, cells)
        numeric = b.kind == "numeric"
        # per cell; a measured numeric table was smoothed (variance x 3/8); a derived one's sigma already
        # carries its coarse row's noise (structure.derive_fine)
        noise = float(t.sigma) * (math.sqrt(0.375) if numeric and not t.derived else 1.0)
        signal = []
        for r in rows:
            tot = float(r.sum())
            kept = int((r > 0).sum())
            signal.append(round(max(0.0, 1.0 - noise * math.sqrt(kept) / tot), 4) if tot > 0 else 0.0)
        entry: dict = {"counts": [[round(float(v), 3) for v in r] for r in rows], "signal": signal}
        if numeric:
            entry.update(kind="numeric", lower=float(b.lower), upper=float(b.upper), bins=int(coder.fine),
                         has_missing=bool(b.has_missing))
        else:
            entry.update(kind="discrete", categories=[str(c) for c in b.categories])
        columns[b.name] = entry
    if not columns:
        return None
    return {"by": first.name, "labels": [str(c) for c in first.categories], "mechanism": "opendp-zcdp-marginals",
            "columns": columns}


def _calibrated(x_np: np.ndarray, c_np: np.ndarray, enc: TableEncoder, hist: np.ndarray, struct: Any, coder: Any, *,
                eps_sgd: float, delta: float, epochs: int, batch_size: int, n_est: float, seed: int, accountant: str,
                settings: TrainingSettings, progress: Progress, threads: int, old_threads: int) -> dict[str, Any]:
    """Train; if the accountant reports more than the DP-SGD share, recalibrate lower and train again."""
    import torch

    try:
        target = eps_sgd
        for _attempt in range(4):
            result = _train_once(x_np, c_np, enc, hist, struct, coder, eps_sgd_target=target, delta=delta,
                                 epochs=epochs, batch_size=batch_size, n_est=n_est, seed=seed, accountant=accountant,
                                 settings=settings, progress=progress)
            if result["spent"] <= eps_sgd + 1e-12:
                return result
            target *= 0.97  # never report above the target
        raise PrivacyOverrun(f"the accountant kept reporting more than epsilon {eps_sgd:.4g} for DP-SGD")
    finally:
        if threads:
            torch.set_num_threads(old_threads)


def gem_targets(struct: Any, coder: Any, enc: TableEncoder) -> list[tuple]:
    """(columns, resolutions, target probabilities) of every measured table the generator must match
    (the condition histogram is matched by construction: condition vectors are drawn from it)."""
    import torch

    out = []
    conds = {b.name for b in enc.cond_blocks}
    for t in struct.tables:
        if all(c in conds for c in t.cols):
            continue
        p = t.counts / max(float(t.counts.sum()), 1e-12)
        out.append((t.cols, t.res, torch.from_numpy(p.astype(np.float32))))
    return out


def column_probs(raw: Any, c: Any, enc: TableEncoder, coder: Any) -> dict[tuple[str, str], Any]:
    """Per record, the generator's differentiable probabilities over each column's table cells."""
    import torch

    from synthehr.tools.engines.dpgan.networks import cell_probs

    out: dict[tuple[str, str], Any] = {}
    mats = coder.torch_mats()
    for b in enc.cond_blocks:
        out[(b.name, "cond")] = c[:, b.start : b.start + b.width]
    for b, p in zip(enc.blocks, cell_probs(raw, enc)):
        if b.kind == "discrete":
            out[(b.name, "fine")] = out[(b.name, "coarse")] = p
            continue
        out[(b.name, "fine")] = p
        out[(b.name, "coarse")] = p @ mats[b.name]
    return out


def gem_loss(targets: list[tuple], probs: dict, conditional: bool = False) -> Any:
    """Mean L1 distance between the batch's expected table cells and the DP tables (probabilities).

    conditional: a table whose second column is a conditioning column ("cond") is compared column by
    column, P(first | cond value), averaged over the cond values holding >= 1 % of the target, so a
    small cohort (people with diabetes) is fitted as closely as the majority."""
    import torch

    if not targets:
        return torch.zeros(())
    total = torch.zeros(())
    for cols, res, tgt in targets:
        ps = [probs[(c, z)] for c, z in zip(cols, res)]
        if len(ps) == 1:
            est = ps[0].mean(0)
        elif conditional and res[1] == "cond":
            joint = ps[0].T @ ps[1]  # (cells, cond values), expected counts in the batch
            mass = joint.sum(0)
            tmass = tgt.sum(0)
            keep = (tmass >= 0.01) & (mass > 0)
            if bool(keep.any()):
                est_c = joint[:, keep] / mass[keep]
                tgt_c = tgt[:, keep] / tmass[keep]
                total = total + (est_c - tgt_c).abs().sum(0).mean()
                continue
            est = joint / ps[0].shape[0]
        else:
            est = (ps[0].T @ ps[1]) / ps[0].shape[0]
        total = total + (est - tgt).abs().sum()
    return total / len(targets)


def _train_once(x_np: np.ndarray, c_np: np.ndarray, enc: TableEncoder, hist: np.ndarray, struct: Any, coder: Any, *,
                eps_sgd_target: float, delta: float, epochs: int, batch_size: int, n_est: float, seed: int,
                accountant: str, settings: TrainingSettings, progress: Progress) -> dict[str, Any]:
    import torch
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader
    from torch.nn import functional as F
    from torch.utils.data import TensorDataset

    from synthehr.tools.engines.dpgan.networks import Discriminator, Generator, activate

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the user's seed: weight initialisation and latent noise only
        gen_nn = Generator(settings.noise_dim, enc.cond_dim, enc.raw_dim, settings.hidden_dim, settings.generator_layers)
        disc = Discriminator(enc.data_dim + enc.cond_dim, settings.discriminator_hidden_dim, settings.discriminator_layers)
        opt_g = torch.optim.Adam(gen_nn.parameters(), lr=settings.generator_lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=settings.discriminator_lr,
                                 betas=(settings.discriminator_beta1, 0.999))
        # Poisson sampling at rate batch / n_public from a secure generator; the accountant uses
        # 1 / int(n_public / batch) >= that rate (conservative).
        rate = min(1.0, batch_size / max(n_est, 1.0))
        dataset = TensorDataset(torch.from_numpy(x_np), torch.from_numpy(c_np))
        dp_loader = DPDataLoader(dataset, sample_rate=rate, generator=secure_torch_generator())
        engine = PrivacyEngine(accountant=accountant)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            disc, opt_d, dp_loader = engine.make_private_with_epsilon(
                module=disc, optimizer=opt_d, data_loader=dp_loader, target_epsilon=eps_sgd_target,
                target_delta=delta, epochs=epochs, max_grad_norm=settings.max_grad_norm, poisson_sampling=False,
                noise_generator=secure_torch_generator(),
            )
        sigma = float(opt_d.noise_multiplier)
        sample_rate = 1.0 / len(dp_loader)
        expected = max(1, int(round(n_est * sample_rate)))
        opt_d.expected_batch_size = expected  # the update scale from public n, not the true n
        probs = torch.from_numpy((hist / hist.sum()).ravel() if hist.sum() > 0 else np.full(hist.size, 1.0 / hist.size))
        sizes = list(hist.shape)
        cond_gen = torch.Generator().manual_seed(seed + 3)
        targets = gem_targets(struct, coder, enc)

        def fake_batch(m: int, with_raw: bool = False, raw_only: bool = False) -> Any:
            flat = torch.multinomial(probs, m, replacement=True, generator=cond_gen).numpy()
            codes = np.stack(np.unravel_index(flat, sizes), axis=1) if enc.cond_blocks else np.zeros((m, 0), int)
            c = torch.from_numpy(enc.codes_to_onehot(codes))
            z = torch.randn(m, settings.noise_dim)
            raw = gen_nn(z, c)
            if raw_only:  # the marginal loss reads the softmaxes only: no Gumbel draws needed
                return None, c, raw
            out = activate(raw, enc, tau=settings.gumbel_tau)
            return (out, c, raw) if with_raw else (out, c)

        lam = float(settings.marginal_weight) * GEM_WEIGHT
        history: list[dict[str, Any]] = []
        pre_losses: list[float] = []
        t_pre = time.perf_counter()
        if lam > 0 and targets:
            # Fit the DP tables first (free: no real record is touched), then refine adversarially.
            # A separate optimiser at GEM's learning rate (1e-3); its state is dropped afterwards.
            opt_pre = torch.optim.Adam(gen_nn.parameters(), lr=PRETRAIN_LR)
            total_pre = int(settings.marginal_pretrain_steps)
            progress.start("fitting the DP tables", total=total_pre)
            # Batches of 1,024 records: unlike the DP-SGD steps, these matrix products gain from a second
            # thread (NHANES, 2 cores: 21 s -> 14 s), as sampling's do; settings.threads = 0 leaves torch's choice.
            reported = 0
            with (torch_threads(max(settings.threads, sampling_threads())) if settings.threads
                  else contextlib.nullcontext()):
                for step in range(1, total_pre + 1):
                    opt_pre.zero_grad(set_to_none=True)
                    _, fc, raw = fake_batch(1024, raw_only=True)
                    loss = gem_loss(targets, column_probs(raw, fc, enc, coder), settings.marginal_conditional)
                    loss.backward()
                    opt_pre.step()
                    pre_losses.append(float(loss.detach()))
                    if step % 50 == 0 or step == total_pre:
                        progress.update(step - reported, marginal_l1=pre_losses[-1])
                        reported = step
            progress.finish()
        t_pre = time.perf_counter() - t_pre
        steps = 0
        progress.start("training DP-GAN", total=epochs)
        for epoch in range(epochs):
            g_losses, m_losses = [], []
            for xb, cb in dp_loader:
                # --- discriminator: one private step on real (Poisson) + a fixed number of fakes
                with torch.no_grad():
                    fx, fc = fake_batch(expected)
                inp = torch.cat([torch.cat([xb, cb], 1), torch.cat([fx, fc], 1)], 0)
                target = torch.cat([torch.ones(len(xb)), torch.zeros(expected)])
                opt_d.zero_grad(set_to_none=True)
                loss_d = F.binary_cross_entropy_with_logits(disc(inp), target)  # never recorded: real rows
                loss_d.backward()
                opt_d.step()
                steps += 1
                # --- generator: post-processing of the private discriminator (hooks off) and the DP tables
                disc.disable_hooks()
                for _ in range(settings.generator_steps):
                    opt_g.zero_grad(set_to_none=True)
                    fx, fc, raw = fake_batch(max(expected, 256), with_raw=True)
                    loss_g = F.binary_cross_entropy_with_logits(disc(torch.cat([fx, fc], 1)), torch.ones(len(fx)))
                    g_losses.append(float(loss_g.detach()))
                    if lam > 0 and targets:
                        lm = gem_loss(targets, column_probs(raw, fc, enc, coder), settings.marginal_conditional)
                        loss_g = loss_g + lam * lm
                        m_losses.append(float(lm.detach()))
                    loss_g.backward()
                    opt_g.step()
                disc.enable_hooks()
                opt_d.zero_grad(set_to_none=True)
            eps_now = float(engine.accountant.get_epsilon(delta))
            # Generator-side losses only (fake records against the DP discriminator / the DP tables).
            rec = {"epoch": epoch + 1, "g_loss": float(np.mean(g_losses)) if g_losses else float("nan"),
                   "marginal_l1": float(np.mean(m_losses)) if m_losses else None, "epsilon_dp_sgd": eps_now}
            history.append(rec)
            progress.update(1, g_loss=rec["g_loss"], epsilon=eps_now)
        progress.finish()
        spent = float(engine.accountant.get_epsilon(delta))
    gen_nn.eval()
    return {"generator": gen_nn, "spent": spent, "sigma": sigma, "sample_rate": sample_rate, "steps": steps,
            "history": history, "seconds": time.perf_counter() - t0,
            "pretrain_marginal_l1": pre_losses[-1] if pre_losses else None, "seconds_pretrain": round(t_pre, 3)}
