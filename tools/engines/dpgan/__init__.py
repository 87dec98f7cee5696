"""The DP conditional GAN engine: schema-driven encoding, networks, DP-SGD training, sampling.

Public API (kept stable; the benchmark calls it):
    train_dpgan(frame, schema, *, target_epsilon, target_delta, conditions, epochs=None, batch_size=None,
                seed=0, accountant="prv", settings=None, preprocessing_share=0.8, progress=None)
        -> TrainedGenerator
    TrainedGenerator.sample(n, *, seed, fixed=None, filters=None, proportions=None) -> DataFrame
    TrainedGenerator.save(dir, extra_manifest=None); TrainedGenerator.load(dir, expected_schema=None)
    attributes: epsilon (total spent incl. preprocessing), delta, target_epsilon, accountant, charges, history

Importing this package is light; torch/opacus are imported when training or sampling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthehr.tools.engines.dpgan.privacy import default_delta

if TYPE_CHECKING:  # pragma: no cover
    from synthehr.tools.engines.dpgan.model import ModelLoadError, TrainedGenerator
    from synthehr.tools.engines.dpgan.train import train_dpgan

__all__ = ["ModelLoadError", "TrainedGenerator", "default_delta", "train_dpgan"]


def __getattr__(name: str) -> Any:
    if name == "train_dpgan":
        from synthehr.tools.engines.dpgan.train import train_dpgan

        return train_dpgan
    if name in ("TrainedGenerator", "ModelLoadError"):
        from synthehr.tools.engines.dpgan import model

        return getattr(model, name)
    raise AttributeError(name)
