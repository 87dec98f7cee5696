"""Importable Python API: the same work as `synthehr train` and `synthehr generate`.

    from synthehr.tools import api
    api.train("nhanes-2017-2018", epsilon=1.0)
    result = api.generate("type 2 diabetes", n=2000, filters=["age_years>=65"])
    result["files"]["csv"]

Both return plain dicts (the tools' structured results). User errors raise synthehr.tools.base.ToolInputError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthehr.tools.deps import Deps, build_deps


def _deps(deps: Deps | None, config: Path | str | None, session: str) -> Deps:
    return deps if deps is not None else build_deps(config, session=session)


def train(source: str, epsilon: float, *, delta: float | None = None, conditions: list[str] | None = None,
          epochs: int | None = None, accountant: str | None = None, seed: int | None = None,
          deps: Deps | None = None, config: Path | str | None = None, session: str = "default") -> dict[str, Any]:
    """Train a DP generator on `source`, charging (epsilon, delta) to its ledger. Returns the summary."""
    from synthehr.tools.train_generator import TrainGeneratorArgs, train_generator

    d = _deps(deps, config, session)
    args = TrainGeneratorArgs(source=source, epsilon=epsilon, delta=delta, conditions=conditions, epochs=epochs,
                              accountant=accountant, seed=seed)
    result = train_generator(d, args)
    d.save_session()
    return result.data


def generate(condition: str, n: int | None = None, *, observations: int | list[str] | None = None,
             population: str | None = None, filters: list[Any] | None = None,
             proportions: dict[str, float] | list[str] | None = None, epsilon: float | None = None,
             seed: int | None = None, source: str | None = None, deps: Deps | None = None,
             config: Path | str | None = None, session: str = "default") -> dict[str, Any]:
    """Generate a synthetic cohort; returns paths, privacy, stats and the data card (never rows)."""
    from synthehr.tools.generate_cohort import GenerateCohortArgs, generate_cohort

    d = _deps(deps, config, session)
    args = GenerateCohortArgs(condition=condition, n=n, observations=observations, population=population,
                              filters=filters, proportions=proportions, epsilon=epsilon, seed=seed, source=source)
    result = generate_cohort(d, args)
    d.save_session()
    return {**result.data, "text": result.text}
