"""A trained DP conditional GAN: sampling under cohort constraints, saving and verified loading.

Artifacts in a model folder:
  generator.safetensors   the generator's weights (no pickle)
  manifest.json           schema, hyperparameters, public encoder layout, the DP-noised condition
                          histogram, privacy (epsilon, delta, accountant, target, charges), seed,
                          versions, sha256 of the weights, and a sha256 of the manifest body.
Neither file holds a training row: the generator is post-processing of DP-SGD, the histogram is
Laplace-noised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthehr.errors import ToolInputError
from synthehr.tools.engines.dpgan.calibrate import POOL_FACTOR
from synthehr.tools.engines.dpgan.cohort import Filter, Predicate, Stratum, allocate, cross_strata, parse_filters, parse_proportions
from synthehr.tools.engines.dpgan.encoding import MISSING, TableEncoder, label_index
from synthehr.tools.engines.dpgan.rules import apply_rules, presence_overrides, round_to_precision
from synthehr.tools.store.schema import SourceSchema
from synthehr.tools.store.workspace import atomic_write_bytes, atomic_write_text

FORMAT = "synthehr-dpgan/1"
WEIGHTS = "generator.safetensors"
MANIFEST = "manifest.json"

# Rejection sampling: give up when, after at least this many candidates, fewer than MIN_ACCEPT were kept.
MIN_TRIES = 50_000
# Calibrated sampling draws at least this many records per round, so the pool's cells are well filled.
CALIBRATION_MIN_POOL = 8_192
MIN_ACCEPT = 0.002
MAX_TRIES_PER_ROW = 2_000


class ModelLoadError(ToolInputError):
    """A saved model cannot be used: tampered, incomplete, or made for another schema."""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def library_versions() -> dict[str, str]:
    import opacus
    import torch

    from synthehr import __version__

    return {"synthehr": __version__, "torch": torch.__version__, "opacus": opacus.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "python": platform.python_version()}


class TrainedGenerator:
    """The generator plus everything needed to sample from it (no training data)."""

    def __init__(self, generator: Any, encoder: TableEncoder, cond_hist: np.ndarray, *, epsilon: float, delta: float,
                 target_epsilon: float, target_delta: float, accountant: str, charges: list[dict],
                 history: list[dict], hyperparameters: dict, seed: int, privacy_details: dict | None = None,
                 manifest_extra: dict | None = None, released_marginals: dict | None = None):
        self.generator = generator
        self.encoder = encoder
        self.schema: SourceSchema = encoder.schema
        self.conditions: list[str] = list(encoder.conditions)
        self.cond_hist = np.asarray(cond_hist, dtype=float)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self.target_epsilon = float(target_epsilon)
        self.target_delta = float(target_delta)
        self.accountant = accountant
        self.charges = list(charges)
        self.history = list(history)
        self.hyperparameters = dict(hyperparameters)
        self.seed = int(seed)
        self.privacy_details = dict(privacy_details or {})
        self.manifest_extra = dict(manifest_extra or {})
        # The per-column DP tables by the first conditioning column, as released (post-processed counts; see
        # train.released_tables): kept so that a cohort can be compared with the source at no privacy cost.
        self.released_marginals = released_marginals
        # Re-derive deterministic columns (BMI, non-HDL, diabetes flag, ...) after sampling: see rules.py.
        self.consistency_rules = True
        # Weight generated records to the released DP tables at sampling time: see calibrate.py.
        self.calibrate = True
        # Couple the numeric bin draws to the released pair correlations (coupling.py); False: independent draws.
        self.couple = True
        self._calibrator: Any = None
        self.generator.eval()

    @property
    def calibrator(self) -> Any:
        """The released tables as a sampling calibrator (None for models without them)."""
        if self._calibrator is None and self.hyperparameters.get("structure"):
            from synthehr.tools.engines.dpgan.calibrate import Calibrator

            self._calibrator = Calibrator.from_structure(self.hyperparameters["structure"], self.encoder) or False
        return self._calibrator or None

    # ---- sampling ------------------------------------------------------------------------
    def sample(self, n: int, *, seed: int, fixed: dict | None = None, filters: list | None = None,
               proportions: dict | list | None = None, where: Predicate | None = None,
               max_tries: int | None = None) -> pd.DataFrame:
        """Exactly `n` synthetic records meeting every constraint.

        fixed: {column: value} (a conditioning column is fixed through the condition vector, others by
        rejection); filters: ["age_years>=65", ...]; proportions: {"sex=female": 0.4, "age_years>=65": 0.6};
        where: an extra vectorised predicate (frame -> bool mask), e.g. a cohort definition.
        Raises ToolInputError when the constraints are (nearly) impossible under the model.
        """
        import torch

        if n < 0:
            raise ToolInputError("n must be zero or more")
        base: list[Filter] = []
        for col, val in (fixed or {}).items():
            if col not in self.schema.column_map():
                raise ToolInputError(f"'{col}' is not a column of {self.schema.name}; valid: {', '.join(self.schema.column_map())}")
            if val is None:
                raise ToolInputError(f"fixed value for '{col}' cannot be missing")
            base.extend(parse_filters([{"column": col, "op": "==", "value": val}], self.schema))
        base.extend(parse_filters(filters, self.schema))
        strata = cross_strata(parse_proportions(proportions, self.schema))
        counts = allocate(int(n), [s.share for s in strata])
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(seed))
        frames = []
        for stratum, count in zip(strata, counts):
            if count == 0:
                continue
            frames.append(self._sample_stratum(count, base + stratum.filters, where, rng, gen, stratum, max_tries))
        if not frames:
            return self._generate(np.zeros((0, len(self.conditions)), int), torch.Generator().manual_seed(0))
        out = pd.concat(frames, ignore_index=True)
        if len(frames) > 1:  # interleave strata so the file is not sorted by stratum
            out = out.iloc[rng.permutation(len(out))].reset_index(drop=True)
        return out

    def _allowed_cells(self, filters: list[Filter]) -> np.ndarray:
        """Probabilities over the joint condition cells that the filters allow (DP histogram)."""
        probs = self.cond_hist / self.cond_hist.sum() if self.cond_hist.sum() > 0 else np.ones_like(self.cond_hist)
        allowed = np.ones(self.cond_hist.shape, dtype=bool)
        for j, b in enumerate(self.encoder.cond_blocks):
            fs = [f for f in filters if f.column == b.name]
            if not fs:
                continue
            labels = self.encoder._discrete_series(b, np.arange(b.width))
            frame = pd.DataFrame({b.name: labels})
            ok = np.ones(b.width, dtype=bool)
            for f in fs:
                ok &= f.mask(frame)
            shape = [1] * len(self.encoder.cond_blocks)
            shape[j] = b.width
            allowed &= ok.reshape(shape)
        if not allowed.any():
            raise ToolInputError("the fixed values and filters on the conditioning columns "
                                 f"({', '.join(f.text() for f in filters if f.column in self.conditions)}) exclude every record")
        p = np.where(allowed, probs, 0.0)
        if p.sum() <= 0:
            # The noisy histogram has no mass there: fall back to the product of the DP marginals.
            marg = [probs.sum(axis=tuple(k for k in range(probs.ndim) if k != j)) + 1e-6 for j in range(probs.ndim)]
            p = np.where(allowed, functools.reduce(np.multiply.outer, marg), 0.0)
        return (p / p.sum()).ravel()

    def _sample_stratum(self, count: int, filters: list[Filter], where: Predicate | None, rng: np.random.Generator,
                        gen: Any, stratum: Stratum, max_tries: int | None) -> pd.DataFrame:
        cell_p = self._allowed_cells(filters)
        sizes = list(self.cond_hist.shape)
        rest = [f for f in filters]
        # A conditioning column that a consistency rule re-derives (the ADA diabetes flag from HbA1c and
        # the diagnosis) must end up equal to the condition the record was generated for; otherwise the
        # label no longer matches the features the generator produced for it. Such records are rejected.
        derived = self._rule_derived_conditions()
        need_rejection = bool(rest) or where is not None or bool(derived)
        calib = self.calibrator if self.calibrate else None
        restricted = [c for c in self.conditions if any(f.column == c for f in filters)]
        kept: list[pd.DataFrame] = []
        have, tried = 0, 0
        limit = max_tries or max(MIN_TRIES * 20, count * MAX_TRIES_PER_ROW)
        rate = 1.0
        while have < count:
            want = count - have
            batch = int(min(max(want / max(rate, MIN_ACCEPT) * 1.2 + 64, 1024), 262_144)) if need_rejection else want
            pool = batch * POOL_FACTOR if calib is not None else batch
            if calib is not None:
                pool = max(pool, CALIBRATION_MIN_POOL)
            flat = rng.choice(cell_p.size, size=pool, p=cell_p)
            codes = np.stack(np.unravel_index(flat, sizes), axis=1) if sizes else np.zeros((pool, 0), int)
            frame = self._generate(codes, gen)
            if calib is not None:
                # derived-label consistency first, then calibrate the pool, then the user's filters
                drawn = np.bincount(flat, minlength=cell_p.size)
                ok = self._derived_ok(frame, codes, derived)
                frame, codes = frame.loc[ok].reset_index(drop=True), codes[ok]
                pick = calib.draw(frame, restricted, max(len(frame) // POOL_FACTOR, 1), rng, cond_mix=drawn)
                frame, codes = frame.iloc[pick].reset_index(drop=True), codes[pick]
                batch = len(frame)
            tried += batch
            if need_rejection:
                mask = np.ones(len(frame), dtype=bool)
                for f in rest:
                    mask &= f.mask(frame)
                if where is not None:
                    mask &= np.asarray(where(frame), dtype=bool)
                for j, b in derived if calib is None else ():
                    want = self.encoder._discrete_series(b, codes[:, j])
                    got = frame[b.name]
                    unknown = want.isna().to_numpy() | got.isna().to_numpy()
                    same = want.astype(object).astype(str).to_numpy() == got.astype(object).astype(str).to_numpy()
                    mask &= unknown | same
                frame = frame.loc[mask]
            kept.append(frame)
            have += len(frame)
            rate = max(have / tried, 1e-9)
            if tried >= MIN_TRIES and rate < MIN_ACCEPT or tried >= limit and have < count:
                raise ToolInputError(self._impossible_message(filters, where, have, tried, stratum))
        out = pd.concat(kept, ignore_index=True).iloc[:count].reset_index(drop=True)
        return out

    def _derived_ok(self, frame: pd.DataFrame, codes: np.ndarray, derived: list) -> np.ndarray:
        """Records whose rule-derived conditioning columns still equal the condition they were made for."""
        mask = np.ones(len(frame), dtype=bool)
        for j, b in derived:
            want = self.encoder._discrete_series(b, codes[:, j])
            got = frame[b.name]
            unknown = want.isna().to_numpy() | got.isna().to_numpy()
            same = want.astype(object).astype(str).to_numpy() == got.astype(object).astype(str).to_numpy()
            mask &= unknown | same
        return mask

    def _rule_derived_conditions(self) -> list[tuple[int, Any]]:
        """(index, block) of the conditioning columns that `apply_rules` may rewrite."""
        if not self.consistency_rules:
            return []
        cols = set(self.schema.column_map())
        rewritten = {"diabetes"} if {"diabetes", "diabetes_diagnosed", "hba1c_pct"} <= cols else set()
        return [(j, b) for j, b in enumerate(self.encoder.cond_blocks) if b.name in rewritten]

    def _impossible_message(self, filters: list[Filter], where: Predicate | None, have: int, tried: int,
                            stratum: Stratum) -> str:
        probe = self.sample(20_000, seed=12345)
        cols = sorted({f.column for f in filters})
        bits = []
        for c in cols:
            s = probe[c]
            col = self.schema.column(c)
            if col.is_numeric:
                x = pd.to_numeric(s, errors="coerce").dropna().astype(float)
                if len(x):
                    bits.append(f"{c}: 1st-99th percentile {x.quantile(0.01):.4g}-{x.quantile(0.99):.4g}, "
                                f"median {x.median():.4g}")
            else:
                top = s.astype(str).value_counts(normalize=True).head(4)
                bits.append(f"{c}: " + ", ".join(f"{k} {v:.0%}" for k, v in top.items()))
        what = ", ".join(f.text() for f in filters) or "the cohort definition"
        if where is not None:
            what += (" and " if filters else "; ") + "the cohort definition"
        return (f"the filter {what} is (nearly) impossible under the model: {have} of {tried:,} generated records "
                f"({have / max(tried, 1):.3%}) met it"
                + (f" in stratum '{stratum.label}'" if stratum.label not in ("", "all") else "")
                + ". The model's synthetic records look like this in aggregate: " + ("; ".join(bits) or "n/a")
                + ". Relax the filter or choose values inside that range.")

    def _generate(self, cond_codes: np.ndarray, gen: Any) -> pd.DataFrame:
        import torch

        from synthehr.tools.engines.dpgan.coupling import uniforms
        from synthehr.tools.engines.dpgan.networks import sample_parts

        enc = self.encoder
        n = cond_codes.shape[0]
        chunk = 65_536
        numeric: dict[str, list] = {}
        missing: dict[str, list] = {}
        discrete: dict[str, list] = {}
        with torch.no_grad(), torch_threads(sampling_threads()):
            for i in range(0, n, chunk):
                cc = cond_codes[i : i + chunk]
                c = torch.from_numpy(enc.codes_to_onehot(cc))
                z = torch.randn(len(cc), self.generator.noise_dim, generator=gen)
                coupled = uniforms(self.hyperparameters.get("coupling") if self.couple else None, len(cc), gen)
                parts = sample_parts(self.generator(z, c), enc, gen, coupled)
                for store, part in zip((numeric, missing, discrete), parts):
                    for k, v in part.items():
                        store.setdefault(k, []).append(v)
        cat = lambda d: {k: np.concatenate(v) for k, v in d.items()}  # noqa: E731
        numeric, missing, discrete = cat(numeric), cat(missing), cat(discrete)
        if self.consistency_rules:
            missing.update({k: v for k, v in presence_overrides(self.schema, self._diagnosed(discrete, cond_codes)).items()
                            if k in missing})
        frame = enc.decode(numeric, missing, discrete, cond_codes)
        if self.consistency_rules:
            frame = apply_rules(frame, self.schema)
        return round_to_precision(frame, self.schema)

    def _diagnosed(self, discrete: dict, cond_codes: np.ndarray) -> np.ndarray | None:
        """The generated 0/1 diagnosis flag per record (NaN when missing), or None without that column."""
        name = "diabetes_diagnosed"
        enc = self.encoder
        for j, b in enumerate(enc.cond_blocks):
            if b.name == name:
                codes = cond_codes[:, j]
                break
        else:
            b = next((b for b in enc.blocks if b.name == name), None)
            if b is None or name not in discrete:
                return None
            codes = discrete[name]
        labels = np.array([1.0 if lab == "1" else (0.0 if lab == "0" else np.nan) for lab in b.categories])
        return labels[codes] if len(codes) else np.zeros(0)

    # ---- persistence ---------------------------------------------------------------------
    def manifest(self, extra: dict | None = None) -> dict:
        return {
            "format": FORMAT,
            "schema": self.schema.model_dump(mode="json"),
            "conditions": self.conditions,
            "encoder": self.encoder.describe(),
            "hyperparameters": self.hyperparameters,
            "condition_histogram": {
                "columns": self.conditions,
                "sizes": list(self.cond_hist.shape),
                "noisy_counts": [round(float(v), 3) for v in self.cond_hist.ravel()],
                "mechanism": "OpenDP discrete Gaussian (zCDP, L2 sensitivity 1), made consistent with the other DP tables",
            },
            "privacy": {
                "epsilon": self.epsilon,
                "delta": self.delta,
                "target_epsilon": self.target_epsilon,
                "target_delta": self.target_delta,
                "accountant": self.accountant,
                "composition": "basic sequential composition of the charges below",
                "charges": self.charges,
                **self.privacy_details,
            },
            **({"released_marginals": self.released_marginals} if self.released_marginals else {}),
            "seed": self.seed,
            "history": self.history,
            "versions": library_versions(),
            "extra": {**self.manifest_extra, **(extra or {})},
        }

    def save(self, directory: Path | str, extra_manifest: dict | None = None) -> Path:
        """Write generator.safetensors and manifest.json (atomically each); returns the folder."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.generator.state_dict().items()}
        blob = save(state, metadata={"format": FORMAT})
        body = self.manifest(extra_manifest)
        body["weights"] = {"file": WEIGHTS, "sha256": _sha256(blob)}
        self.manifest_extra = dict(body["extra"])
        manifest = {**body, "manifest_sha256": _sha256(_canonical(body))}
        atomic_write_bytes(directory / WEIGHTS, blob)
        atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
        return directory

    @classmethod
    def read_manifest(cls, directory: Path | str) -> dict:
        """Parse and verify manifest.json (its own hash); raises ModelLoadError."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise ModelLoadError(f"{directory}: no {MANIFEST}; this folder holds no saved synthehr model")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise ModelLoadError(f"{path}: not valid JSON (the manifest is damaged)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ModelLoadError(f"{path}: unknown model format {manifest.get('format') if isinstance(manifest, dict) else None!r}; expected {FORMAT}")
        stated = manifest.pop("manifest_sha256", None)
        if stated != _sha256(_canonical(manifest)):
            raise ModelLoadError(f"{path}: the manifest was modified after saving (sha256 mismatch); refusing to load it")
        return manifest

    @classmethod
    def load(cls, directory: Path | str, expected_schema: SourceSchema | None = None) -> "TrainedGenerator":
        import torch
        from safetensors.torch import load as st_load

        from synthehr.tools.engines.dpgan.networks import Generator

        directory = Path(directory)
        manifest = cls.read_manifest(directory)
        wpath = directory / manifest["weights"]["file"]
        if not wpath.is_file():
            raise ModelLoadError(f"{directory}: the weights file {manifest['weights']['file']} is missing")
        blob = wpath.read_bytes()
        if _sha256(blob) != manifest["weights"]["sha256"]:
            raise ModelLoadError(f"{wpath}: the weights do not match the manifest's sha256 (modified or damaged)")
        schema = SourceSchema.model_validate(manifest["schema"])
        if expected_schema is not None and _canonical(expected_schema.model_dump(mode="json")) != _canonical(manifest["schema"]):
            exp = {c.name: c for c in expected_schema.columns}
            got = {c.name: c for c in schema.columns}
            diff = sorted(set(exp) ^ set(got)) or [k for k in exp if k in got and exp[k] != got[k]]
            raise ModelLoadError(
                f"{directory}: the model was trained on a different schema of '{schema.name}' than "
                f"'{expected_schema.name}' has now" + (f" (columns differ: {', '.join(diff[:8])})" if diff else "")
                + "; train a new model")
        hp = manifest["hyperparameters"]
        enc = TableEncoder(schema, manifest["conditions"], hp.get("numeric_bins", 0))
        g = Generator(hp["noise_dim"], enc.cond_dim, enc.raw_dim, hp["hidden_dim"], hp.get("generator_layers", 2))
        g.load_state_dict({k: v for k, v in st_load(blob).items()})
        hist = np.asarray(manifest["condition_histogram"]["noisy_counts"], dtype=float).reshape(
            manifest["condition_histogram"]["sizes"])
        pv = manifest["privacy"]
        details = {k: v for k, v in pv.items() if k not in
                   {"epsilon", "delta", "target_epsilon", "target_delta", "accountant", "charges", "composition"}}
        del torch
        return cls(g, enc, hist, epsilon=pv["epsilon"], delta=pv["delta"], target_epsilon=pv["target_epsilon"],
                   target_delta=pv["target_delta"], accountant=pv["accountant"], charges=pv["charges"],
                   history=manifest.get("history", []), hyperparameters=hp, seed=manifest["seed"],
                   privacy_details=details, manifest_extra=manifest.get("extra", {}),
                   released_marginals=manifest.get("released_marginals"))


# Sampling runs the generator on large chunks; torch splits those matmuls over the batch rows, so each
# value is computed in the same order whatever the thread count and a seed gives the same rows on 1 or 2
# threads (a test checks this). Two threads: ~1.6x faster on an idle 2-core machine.
SAMPLING_THREADS = 2


def sampling_threads() -> int:
    return max(1, min(SAMPLING_THREADS, os.cpu_count() or 1))


class torch_threads:
    """Run a block with torch on `n` threads, then restore the previous count."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.old)


__all__ = ["ModelLoadError", "TrainedGenerator", "library_versions", "MISSING", "label_index"]
