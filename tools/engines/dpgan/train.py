"""DP training of the conditional GAN.

Privacy (add/remove-one-record neighbours):
  1. preprocessing, epsilon_pre = preprocessing_share * target_epsilon: the joint histogram of the
     conditioning columns (Laplace, pure DP) and, when marginal_weight > 0, the per-column marginal
     tables by the first conditioning column, released jointly with the analytic Gaussian mechanism
     (L2 sensitivity sqrt(#tables), delta_pre = target_delta / 2; marginal_mechanism "gaussian", the
     default) or Laplace (L1 sensitivity #tables, delta 0; "laplace");
  2. the discriminator trains with Opacus DP-SGD (per-sample clipping, Gaussian noise, Poisson
     sampling), calibrated by `make_private_with_epsilon` to epsilon_sgd = target - epsilon_pre at
     target_delta - delta_pre with the chosen accountant (PRV default, RDP option);
  3. the generator only ever sees the discriminator's output: post-processing, no extra cost.
The spent epsilon is read back from the accountant after training and asserted <= epsilon_sgd;
the reported total is epsilon_pre + spent <= target and delta_pre + delta_sgd = target_delta (basic
composition of the parts).

Each discriminator step sees one Poisson batch of real records plus a FIXED number of generated
records (the expected batch size), so one real record's presence changes the clipped gradient sum
by at most max_grad_norm.
"""

from __future__ import annotations

import os

import math
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

from synthehr.progress import NullProgress, Progress
from synthehr.configs.settings import TrainingSettings
from synthehr.tools.engines.dpgan.encoding import TableEncoder
from synthehr.tools.engines.dpgan.model import TrainedGenerator
from synthehr.tools.engines.dpgan.privacy import denoise_rows, gaussian_tables, laplace_tables, norm_sub, split_budget
from synthehr.tools.store.schema import SourceSchema


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
    preprocessing_share: float = 0.3,
    progress: Progress | None = None,
) -> TrainedGenerator:
    """Train a DP conditional GAN on `frame` (all rows are training rows: split a holdout off before).

    Returns a TrainedGenerator whose `.epsilon` (preprocessing + DP-SGD spent) <= target_epsilon.
    """
    import torch

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
    enc = TableEncoder(schema, list(conditions), settings.numeric_bins)
    frame = frame[[c.name for c in schema.columns]]
    x_np, c_np = enc.encode(frame)
    codes = enc.encode_conditions_codes(frame)

    epochs = int(epochs or settings.epochs)
    bs = int(batch_size or settings.batch_size)
    bs = max(1, min(bs, n))
    eps_pre, eps_sgd = split_budget(target_epsilon, preprocessing_share)

    threads = settings.threads
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    # Privacy noise never comes from the user's seed (which is published in the manifest and card): the
    # DP tables' noise is drawn from a generator seeded from the operating system's entropy, never stored.
    rng = np.random.default_rng(_os_entropy(16))
    # Per-column tables are only released when the generator is fitted to them (marginal_weight > 0);
    # otherwise the whole preprocessing share buys the joint condition histogram alone.
    with_tables = settings.marginal_weight > 0 and bool(enc.blocks) and eps_pre > 0
    # Gaussian tables spend a share of delta too (basic composition: the deltas add up to target_delta).
    delta_pre = target_delta * 0.5 if (with_tables and settings.marginal_mechanism == "gaussian") else 0.0
    delta_sgd = float(target_delta) - delta_pre
    signal: list = []
    hist, marginals, eps_hist, sigma_tables = dp_tables(frame, enc, codes, eps_pre, rng, settings.marginal_bins,
                                                        with_tables=with_tables, delta=delta_pre, signal=signal)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="opacus")
        warnings.filterwarnings("ignore", message=".*(Full backward hook|Secure RNG|Optimal order).*")
        result = _calibrated(x_np, c_np, enc, hist, marginals, eps_sgd=eps_sgd, delta=delta_sgd, epochs=epochs,
                             batch_size=bs, seed=seed, accountant=accountant, settings=settings, progress=progress,
                             threads=threads, old_threads=old_threads)
    spent = float(result["spent"])
    total = eps_pre + spent
    if not (spent <= eps_sgd + 1e-12 and total <= target_epsilon + 1e-9):  # never report above the target
        raise PrivacyOverrun(f"privacy accounting overran the target: {total} > {target_epsilon}")
    by = conditions[0] if conditions else "nothing"
    if marginals and delta_pre > 0:
        charges = [
            {"mechanism": "laplace-histogram", "what": f"joint frequencies of the conditioning columns "
             f"({', '.join(conditions) or 'none'})", "epsilon": eps_hist, "delta": 0.0},
            {"mechanism": "gaussian-marginals", "what": f"per-column marginals by {by} (analytic Gaussian, "
             f"L2 sensitivity sqrt({len(marginals)}), sigma {sigma_tables:.4g})",
             "epsilon": eps_pre - eps_hist, "delta": delta_pre},
        ]
    else:
        charges = [
            {"mechanism": "laplace-histogram", "what": f"joint frequencies of the conditioning columns "
             f"({', '.join(conditions) or 'none'})" + (f" and per-column marginals by {by}" if marginals else ""),
             "epsilon": eps_pre, "delta": 0.0},
        ]
    charges.append({"mechanism": f"dp-sgd-opacus-{accountant}", "what": "discriminator training (Poisson sampling)",
                    "epsilon": spent, "delta": delta_sgd})
    hp = {
        "epochs": epochs, "batch_size": bs, "max_grad_norm": settings.max_grad_norm,
        "generator_lr": settings.generator_lr, "discriminator_lr": settings.discriminator_lr,
        "noise_dim": settings.noise_dim, "hidden_dim": settings.hidden_dim,
        "generator_layers": settings.generator_layers, "discriminator_hidden_dim": settings.discriminator_hidden_dim,
        "discriminator_layers": settings.discriminator_layers, "generator_steps": settings.generator_steps,
        "discriminator_beta1": settings.discriminator_beta1, "gumbel_tau": settings.gumbel_tau,
        "numeric_bins": settings.numeric_bins, "marginal_weight": settings.marginal_weight,
        "marginal_bins": settings.marginal_bins, "moment_weight": settings.moment_weight,
        "moment_weight_adversarial": settings.moment_weight_adversarial,
        "marginal_pretrain_steps": settings.marginal_pretrain_steps, "marginal_mechanism": settings.marginal_mechanism,
        "preprocessing_share": preprocessing_share, "n_train": n,
    }
    details = {
        "epsilon_preprocessing": eps_pre, "delta_preprocessing": delta_pre, "delta_dp_sgd": delta_sgd,
        "epsilon_dp_sgd": spent, "epsilon_dp_sgd_share": eps_sgd,
        "noise_multiplier": result["sigma"], "sample_rate": result["sample_rate"], "steps": result["steps"],
        "neighbouring": "add/remove one record", "seconds": result["seconds"],
    }
    return TrainedGenerator(result["generator"], enc, hist, epsilon=total, delta=float(target_delta),
                            target_epsilon=float(target_epsilon), target_delta=float(target_delta),
                            accountant=accountant, charges=charges, history=result["history"],
                            hyperparameters=hp, seed=seed, privacy_details=details,
                            released_marginals=released_tables(enc, marginals, settings.marginal_bins,
                                                               charges[-2]["mechanism"] if len(charges) > 1 else "",
                                                               signal))


def released_tables(enc: TableEncoder, marginals: list, bins: int, mechanism: str,
                    signal: list | None = None) -> dict | None:
    """The per-column DP tables (`dp_tables`, already charged) in the form the model keeps: for each generated
    column, its post-processed counts per value of the first conditioning column, over the public cells
    (numeric: `bins` equal-width bins of the column's public range, then the missing cell where it has one).
    Keeping and reading them again is post-processing: no record is touched and nothing is charged. `signal`
    (from dp_tables) says per row how much of it rose above the noise: a reader compares only with rows that
    describe their own label (synthehr.tools.engines.source_figures)."""
    if not marginals:
        return None
    first = enc.cond_blocks[0] if enc.cond_blocks else None
    columns: dict[str, dict] = {}
    for i, (b, t) in enumerate(zip(enc.blocks, marginals)):
        rows = np.asarray(t["label_rows"] if isinstance(t, dict) else t, dtype=float)
        entry: dict = {"counts": [[round(float(v), 3) for v in r] for r in np.clip(rows, 0, None)]}
        if signal is not None and i < len(signal):
            entry["signal"] = list(signal[i])  # per row: share of its noisy total above the noise threshold
        if b.kind == "numeric":
            entry.update(kind="numeric", lower=float(b.lower), upper=float(b.upper), bins=max(int(bins), 1),
                         has_missing=bool(b.has_missing))
        else:
            entry.update(kind="discrete", categories=[str(c) for c in b.categories])
        columns[b.name] = entry
    return {"by": first.name if first is not None else None,
            "labels": [str(c) for c in first.categories] if first is not None else ["all"],
            "mechanism": mechanism, "columns": columns}


def _calibrated(x_np: np.ndarray, c_np: np.ndarray, enc: TableEncoder, hist: np.ndarray, marginals: list, *,
                eps_sgd: float, delta: float, epochs: int, batch_size: int, seed: int, accountant: str,
                settings: TrainingSettings, progress: Progress, threads: int, old_threads: int) -> dict[str, Any]:
    """Train; if the accountant reports more than the DP-SGD share, recalibrate lower and train again."""
    import torch

    try:
        target = eps_sgd
        for _attempt in range(4):
            result = _train_once(x_np, c_np, enc, hist, marginals, eps_sgd_target=target, delta=delta, epochs=epochs,
                                 batch_size=batch_size, seed=seed, accountant=accountant, settings=settings,
                                 progress=progress)
            if result["spent"] <= eps_sgd + 1e-12:
                return result
            target *= 0.97  # never report above the target
        raise PrivacyOverrun(f"the accountant kept reporting more than epsilon {eps_sgd:.4g} for DP-SGD")
    finally:
        if threads:
            torch.set_num_threads(old_threads)


def dp_tables(frame: pd.DataFrame, enc: TableEncoder, codes: np.ndarray, eps_pre: float,
              rng: np.random.Generator, bins: int, with_tables: bool = True,
              delta: float = 0.0, signal: list | None = None) -> tuple[np.ndarray, list, float, float]:
    """One epsilon_pre-DP Laplace release: the joint histogram of the conditioning columns and, for every
    generated column, its marginal over public cells split by the first conditioning column.

    `signal`, when a list, receives per table the share of each row's noisy total that lies in cells above
    the denoising threshold (1: the released row is its own shape; 0: it borrowed the pooled shape), so that
    a reader of the tables knows which rows describe their label (post-processing, free)."""
    sizes = enc.cond_sizes
    cells = int(np.prod(sizes)) if sizes else 1
    if cells > 100_000:
        raise ValueError(f"the conditioning columns have {cells} joint cells; condition on fewer columns")
    flat = np.ravel_multi_index(codes.T, sizes) if sizes else np.zeros(len(frame), dtype=int)
    # Part of epsilon_pre for the joint condition histogram alone (it sets cohort prevalence and the
    # shares the sampler reproduces; a quarter with Gaussian tables, half with Laplace ones), the rest for
    # the per-column tables (sequential composition).
    # Without per-column tables (with_tables=False) the joint histogram gets all of epsilon_pre and the
    # returned marginals list is empty.
    eps_hist = (eps_pre / 4 if delta > 0 else eps_pre / 2) if (enc.blocks and with_tables) else eps_pre
    hist = norm_sub(laplace_tables([np.bincount(flat, minlength=cells).astype(float)], eps_hist, rng)[0])
    if not with_tables:
        return hist.reshape(sizes or [1]), [], eps_hist, 0.0
    eps_pre = eps_pre - eps_hist
    tables: list[np.ndarray] = []
    label = codes[:, 0] if sizes else np.zeros(len(frame), dtype=int)
    n_label = sizes[0] if sizes else 1
    for b in enc.blocks:
        t = np.zeros((n_label, enc.marginal_cells(b, bins)))
        np.add.at(t, (label, enc.marginal_codes(frame, b, bins)), 1.0)
        tables.append(t)
    if delta > 0:  # one joint Gaussian release: L2 sensitivity sqrt(#tables) instead of L1 #tables
        noisy, scale = gaussian_tables(tables, eps_pre, delta, rng)
    else:
        noisy = laplace_tables(tables, eps_pre, rng)
        scale = len(tables) / eps_pre if eps_pre > 0 else 0.0
    hist = hist.reshape(sizes or [1])
    out = []
    for b, t in zip(enc.blocks, noisy):
        if signal is not None:
            kept = np.where(t > 3.0 * scale, t, 0.0).sum(axis=1) if scale > 0 else np.clip(t, 0, None).sum(axis=1)
            signal.append([round(float(k / max(tot, 1.0)), 4) for k, tot in zip(kept, np.clip(t.sum(axis=1), 0, None))])
        if b.kind == "numeric":
            # Numeric shapes: too noisy per label at small epsilon; pool the label rows (noise grows by
            # sqrt(rows) while counts grow by the number of rows) and keep per-label missingness.
            pooled = denoise_rows(t.sum(axis=0, keepdims=True), scale * np.sqrt(t.shape[0]))
            miss = np.clip(t[:, -1:], 0, None) if b.has_missing else None
            out.append({"pooled": pooled[0], "label_missing": miss, "label_total": np.clip(t.sum(axis=1), 1, None),
                        "label_rows": denoise_rows(t, scale)})
        else:
            out.append(denoise_rows(t, scale))
    return hist, out, eps_hist, scale


def _train_once(x_np: np.ndarray, c_np: np.ndarray, enc: TableEncoder, hist: np.ndarray, marginals: list[np.ndarray], *, eps_sgd_target: float,
                delta: float, epochs: int, batch_size: int, seed: int, accountant: str, settings: TrainingSettings,
                progress: Progress) -> dict[str, Any]:
    import warnings

    import torch
    from opacus import PrivacyEngine
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from synthehr.tools.engines.dpgan.networks import Discriminator, Generator, activate, cell_probs, numeric_value

    t0 = time.perf_counter()
    n = x_np.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen_nn = Generator(settings.noise_dim, enc.cond_dim, enc.raw_dim, settings.hidden_dim, settings.generator_layers)
        disc = Discriminator(enc.data_dim + enc.cond_dim, settings.discriminator_hidden_dim, settings.discriminator_layers)
        opt_g = torch.optim.Adam(gen_nn.parameters(), lr=settings.generator_lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=settings.discriminator_lr,
                                 betas=(settings.discriminator_beta1, 0.999))
        # Poisson sampling and DP-SGD noise: torch generators seeded from os.urandom (torchcsprng, which Opacus'
        # secure_mode needs, does not install on torch 2.x); the seed only sets weights and synthetic draws.
        data_gen = torch.Generator().manual_seed(_os_entropy(8) >> 1)
        loader = DataLoader(TensorDataset(torch.from_numpy(x_np), torch.from_numpy(c_np)), batch_size=batch_size,
                            shuffle=False, generator=data_gen)
        engine = PrivacyEngine(accountant=accountant)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            disc, opt_d, dp_loader = engine.make_private_with_epsilon(
                module=disc, optimizer=opt_d, data_loader=loader, target_epsilon=eps_sgd_target, target_delta=delta,
                epochs=epochs, max_grad_norm=settings.max_grad_norm, poisson_sampling=True,
                noise_generator=torch.Generator().manual_seed(_os_entropy(8) >> 1),
            )
        sigma = float(opt_d.noise_multiplier)
        sample_rate = 1.0 / len(loader)
        expected = max(1, int(round(n * sample_rate)))
        probs = torch.from_numpy((hist / hist.sum()).ravel() if hist.sum() > 0 else np.full(hist.size, 1.0 / hist.size))
        sizes = list(hist.shape)
        cond_gen = torch.Generator().manual_seed(seed + 3)

        def fake_batch(m: int, with_raw: bool = False) -> Any:
            flat = torch.multinomial(probs, m, replacement=True, generator=cond_gen).numpy()
            codes = np.stack(np.unravel_index(flat, sizes), axis=1) if enc.cond_blocks else np.zeros((m, 0), int)
            c = torch.from_numpy(enc.codes_to_onehot(codes))
            z = torch.randn(m, settings.noise_dim)
            raw = gen_nn(z, c)
            out = activate(raw, enc, tau=settings.gumbel_tau)
            return (out, c, raw) if with_raw else (out, c)

        # DP marginal targets P(cell | first condition), from the noisy tables (post-processing).
        n_label = enc.cond_blocks[0].width if enc.cond_blocks else 1
        mb = max(settings.marginal_bins, 1)
        centers = torch.from_numpy(((np.arange(mb) * 2 + 1) / mb - 1.0).astype(np.float32))
        targets: list[tuple] = []
        weights = None
        for b, t in zip(enc.blocks, marginals):
            if isinstance(t, dict):  # numeric: pooled value distribution + per-label missingness
                pooled = t["pooled"][:mb] + 1e-3
                probs_v = torch.from_numpy((pooled / pooled.sum()).astype(np.float32))
                # Per-label mean and spread of the value (the label relationships downstream models use);
                # a label row with little DP signal falls back to the pooled shape (denoise_rows).
                rows = t["label_rows"][:, :mb] + 1e-3
                pr = torch.from_numpy((rows / rows.sum(axis=1, keepdims=True)).astype(np.float32))
                mean = pr @ centers
                sd = ((pr @ centers**2) - mean**2).clamp(min=1e-4).sqrt()
                miss = None
                if b.has_missing:
                    rate = np.clip(t["label_missing"][:, 0] / t["label_total"], 0.0, 1.0)
                    miss = torch.from_numpy(np.stack([1 - rate, rate], 1).astype(np.float32))
                targets.append(("moments", b, miss, probs_v, mean, sd))
                continue
            t = t + 1e-3
            w = t.sum(axis=1)
            weights = w if weights is None else weights + w
            targets.append(("kl", b, torch.from_numpy((t / t.sum(axis=1, keepdims=True)).astype(np.float32))))
        if weights is None:
            weights = hist.reshape(n_label, -1).sum(axis=1) + 1e-3 if enc.cond_blocks else np.ones(1)
        label_w = torch.from_numpy((weights / weights.sum()).astype(np.float32))

        def kl_rows(tgt: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
            return -(tgt * torch.log(mean + 1e-6)).sum(1) + (tgt * torch.log(tgt.clamp(min=1e-9))).sum(1)

        def marginal_loss(raw: torch.Tensor, c: torch.Tensor, mw: float) -> torch.Tensor:
            if not targets:
                return torch.zeros(())
            lab = c[:, :n_label] if enc.cond_blocks else torch.ones(c.shape[0], 1)
            cnt = lab.sum(0)
            present = (cnt > 0).float()
            denom = cnt.clamp(min=1.0).unsqueeze(1)
            probs_all = cell_probs(raw, enc)
            total = torch.zeros(())
            for spec, p in zip(targets, probs_all):
                if spec[0] == "kl":
                    total = total + (label_w * present * kl_rows(spec[2], (lab.T @ p) / denom)).sum()
                    continue
                _, b, miss, probs_v, mean_t, sd_t = spec
                if miss is not None:
                    pm = torch.stack([1 - p[:, -1], p[:, -1]], 1)
                    total = total + (label_w * present * kl_rows(miss, (lab.T @ pm) / denom)).sum()
                if b.bins == mb:
                    pv = p[:, :mb] / p[:, :mb].sum(1, keepdim=True).clamp(min=1e-6)
                    total = total + kl_rows(probs_v.unsqueeze(0), pv.mean(0, keepdim=True)).sum()
                else:
                    v = numeric_value(raw, b).unsqueeze(1)
                    m1 = (lab.T @ v).squeeze(1) / denom.squeeze(1)
                    m2 = (lab.T @ v**2).squeeze(1) / denom.squeeze(1)
                    sd = (m2 - m1**2).clamp(min=1e-4).sqrt()
                    err = ((m1 - mean_t) ** 2 + (sd - sd_t) ** 2) / 0.01
                    total = total + mw * (label_w * present * err).sum()
            return total / len(targets)

        lam = float(settings.marginal_weight)
        if lam > 0:
            # Fit the DP marginals first (free: no real record is touched), then refine adversarially.
            for _ in range(settings.marginal_pretrain_steps):
                opt_g.zero_grad(set_to_none=True)
                _, fc, raw = fake_batch(max(expected, 256), with_raw=True)
                loss = marginal_loss(raw, fc, float(settings.moment_weight))
                loss.backward()
                opt_g.step()

        history: list[dict[str, Any]] = []
        steps = 0
        progress.start("training DP-GAN", total=epochs)
        for epoch in range(epochs):
            d_losses, g_losses = [], []
            for xb, cb in dp_loader:
                # --- discriminator: one private step on real (Poisson) + a fixed number of fakes
                with torch.no_grad():
                    fx, fc = fake_batch(expected)
                inp = torch.cat([torch.cat([xb, cb], 1), torch.cat([fx, fc], 1)], 0)
                target = torch.cat([torch.ones(len(xb)), torch.zeros(expected)])
                opt_d.zero_grad(set_to_none=True)
                loss_d = F.binary_cross_entropy_with_logits(disc(inp), target)
                loss_d.backward()
                opt_d.step()
                steps += 1
                d_losses.append(float(loss_d.detach()))
                # --- generator: post-processing of the private discriminator (hooks off)
                disc.disable_hooks()
                for _ in range(settings.generator_steps):
                    opt_g.zero_grad(set_to_none=True)
                    fx, fc, raw = fake_batch(expected, with_raw=True)
                    loss_g = F.binary_cross_entropy_with_logits(disc(torch.cat([fx, fc], 1)), torch.ones(expected))
                    if lam > 0:
                        loss_g = loss_g + lam * marginal_loss(raw, fc, float(settings.moment_weight_adversarial))
                    loss_g.backward()
                    opt_g.step()
                    g_losses.append(float(loss_g.detach()))
                disc.enable_hooks()
                opt_d.zero_grad(set_to_none=True)
            eps_now = float(engine.accountant.get_epsilon(delta))
            rec = {"epoch": epoch + 1, "d_loss": float(np.mean(d_losses)) if d_losses else float("nan"),
                   "g_loss": float(np.mean(g_losses)) if g_losses else float("nan"), "epsilon_dp_sgd": eps_now}
            history.append(rec)
            progress.update(1, d_loss=rec["d_loss"], g_loss=rec["g_loss"], epsilon=eps_now)
        progress.finish()
        spent = float(engine.accountant.get_epsilon(delta))
    gen_nn.eval()
    return {"generator": gen_nn, "spent": spent, "sigma": sigma, "sample_rate": sample_rate, "steps": steps,
            "history": history, "seconds": time.perf_counter() - t0}


def _os_entropy(n_bytes: int) -> int:
    """An integer from `n_bytes` of the operating system's secure entropy (never derived from the user's seed)."""
    return int.from_bytes(os.urandom(n_bytes), "big")
