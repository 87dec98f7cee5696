"""Column schemas and provenance metadata of data sources (public information only)."""

from __future__ import annotations

import math
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ColumnType(str, Enum):
    continuous = "continuous"
    integer = "integer"
    binary = "binary"  # stored as 0/1 (nullable)
    categorical = "categorical"  # stored as one of `categories` (strings)


class Column(BaseModel):
    """One column of a data source. Bounds and categories are public knowledge, not read off data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: ColumnType
    label: str = ""
    unit: str | None = None
    lower: float | None = None
    upper: float | None = None
    categories: list[str] | None = None
    loinc: str | None = None
    missing_allowed: bool = True
    description: str = ""
    # Measurement precision (public): generated values are rounded to a multiple of it, e.g. 0.1 for
    # HbA1c %, 1 for blood pressure and lipids. None: full float precision (integer columns: 1).
    precision: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "Column":
        for bound in ("lower", "upper"):
            value = getattr(self, bound)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"column '{self.name}': {bound} bound must be a finite number, not {value}")
        if self.type in (ColumnType.continuous, ColumnType.integer):
            if self.lower is None or self.upper is None:
                raise ValueError(f"column '{self.name}': {self.type.value} columns need public lower and upper bounds")
            if not self.lower < self.upper:
                raise ValueError(f"column '{self.name}': lower bound {self.lower} must be below upper bound {self.upper}")
            if self.categories:
                raise ValueError(f"column '{self.name}': a {self.type.value} column has no categories")
        elif self.lower is not None or self.upper is not None:
            raise ValueError(f"column '{self.name}': a {self.type.value} column has no lower/upper bounds")
        if self.type is ColumnType.categorical:
            if any(not c.strip() for c in self.categories or []):
                raise ValueError(f"column '{self.name}': categories must not be empty")
            if not self.categories or len(self.categories) < 2:
                raise ValueError(f"column '{self.name}': a categorical column needs at least two categories")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"column '{self.name}': categories repeat")
        elif self.type is ColumnType.binary:
            if self.categories:
                raise ValueError(f"column '{self.name}': a binary column is 0/1 and has no categories")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in (ColumnType.continuous, ColumnType.integer)


class SourceMeta(BaseModel):
    """Provenance of a data source."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    title: str
    publisher: str
    url: str
    licence: str
    population: str
    years: str
    citation: str
    description: str = ""
    # Knowledge document describing the source (knowledge/sources/<doc_id>.md), if any.
    doc_id: str | None = None
    # The row count as published by the data's owner (public metadata): used for delta, batch sizing
    # and bins without touching the data. None: the engine uses a DP estimate (charged).
    n_public: int | None = Field(None, gt=0)


class SourceSchema(BaseModel):
    """A registered data source: provenance plus its column schema."""

    model_config = ConfigDict(extra="forbid")

    meta: SourceMeta
    columns: list[Column]
    # Binary/categorical columns a generator may be conditioned on by default.
    condition_columns: list[str] = Field(default_factory=list)
    # For a label column: the columns that define it or exist only because of it. Utility tests
    # (train-on-synthetic, test-on-real) leave them out, or predicting the label would be trivial.
    label_leakage: dict[str, list[str]] = Field(default_factory=dict)
    # Columns that say who the people are (age, sex, race/ethnicity): public metadata. The DP structure
    # measures their table with the cohort label more precisely (a larger share of the budget), because a
    # cohort's make-up is what a reader checks first.
    demographics: list[str] = Field(default_factory=list)
    # Measurements that define the source's cohort label (HbA1c for the ADA diabetes definition): public
    # metadata. Their table with the label gets the demographics' larger share too: after a cohort's
    # make-up, its defining measurement is what a clinician checks first, and its tail (poorly controlled
    # diabetes) is thin enough for the privacy noise to erase at an ordinary share.
    key_measures: list[str] = Field(default_factory=list)

    def precise_columns(self) -> set[str]:
        """Columns whose table with the cohort label gets the larger budget share: demographics and key measures."""
        return set(self.demographics) | set(self.key_measures)

    @model_validator(mode="after")
    def _check(self) -> "SourceSchema":
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"columns repeat: {', '.join(dup)}")
        for label, cols in self.label_leakage.items():
            for c in [label, *cols]:
                if c not in self.column_map():
                    raise ValueError(f"label_leakage names '{c}', which is not a column of the source")
        for field_name in ("demographics", "key_measures"):
            for c in getattr(self, field_name):
                if c not in self.column_map():
                    raise ValueError(f"{field_name} names '{c}', which is not a column of the source")
        for c in self.condition_columns:
            col = self.column_map().get(c)
            if col is None:
                raise ValueError(f"condition column '{c}' is not a column of the source")
            if col.type not in (ColumnType.binary, ColumnType.categorical):
                raise ValueError(f"condition column '{c}' must be binary or categorical, not {col.type.value}")
        return self

    @property
    def name(self) -> str:
        return self.meta.name

    def column_map(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    def column(self, name: str) -> Column:
        try:
            return self.column_map()[name]
        except KeyError:
            raise KeyError(
                f"'{name}' is not a column of {self.name}; valid columns: {', '.join(c.name for c in self.columns)}"
            ) from None
