"""The explicit list of tools the agent can call. Names are unique; adding a duplicate is refused."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from synthehr.tools.base import ToolSpec


class Registry:
    def __init__(self, specs: Iterable[ToolSpec] = ()):
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ToolSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"a tool named '{spec.name}' is already registered")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ToolSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown tool '{name}'; valid tools: {', '.join(self._specs)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def names(self) -> list[str]:
        return list(self._specs)


def default_registry() -> Registry:
    """Every tool synthehr ships, in the order the agent's prompt lists them.

    Each module defines a module-level ToolSpec named SPEC; imports here are light (no torch).
    """
    specs: list[ToolSpec] = []
    from synthehr.tools import export, generate_cohort, privacy_budget, train_generator  # noqa: PLC0415

    specs += [generate_cohort.SPEC, train_generator.SPEC]
    from synthehr.tools import cohort_stats  # noqa: PLC0415

    specs += [cohort_stats.SPEC]
    specs += [privacy_budget.SPEC, export.SPEC]
    from synthehr.tools import provenance  # noqa: PLC0415

    specs += [provenance.SPEC]
    return Registry(specs)
