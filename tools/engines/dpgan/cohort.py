"""Cohort constraints for sampling: fixed values, range filters, target proportions (strata).

Filters are written as "column OP value" with OP one of >=, >, <=, <, ==, =, != (e.g.
"age_years>=65", "sex=female", "hba1c_pct >= 9") or as objects {"column", "op", "value"} or
{"column", "min", "max"}. Proportions: {"sex=female": 0.4, "age_years>=65": 0.6},
{"sex": {"female": 0.4}} or strings "sex=female:0.4". A missing value never satisfies a filter.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from synthehr.errors import ToolInputError
from synthehr.tools.store.schema import ColumnType, SourceSchema

_OPS = (">=", "<=", "!=", "==", ">", "<", "=")
_FILTER_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*(>=|<=|!=|==|>|<|=)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Filter:
    column: str
    op: str  # one of >=, >, <=, <, ==, !=
    value: Any
    negate: bool = False

    def text(self) -> str:
        v = self.value if not isinstance(self.value, float) else f"{self.value:g}"
        s = f"{self.column}{self.op}{v}"
        return f"not({s})" if self.negate else s

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        s = frame[self.column]
        present = s.notna().to_numpy()
        if isinstance(self.value, str):
            vals = s.astype(object).map(lambda v: str(v).lower() if v is not None and v is not pd.NA else None)
            eq = (vals == self.value.lower()).fillna(False).to_numpy(bool)
            m = eq if self.op == "==" else (~eq & present)
        else:
            x = pd.to_numeric(s, errors="coerce").astype(float).to_numpy()
            with np.errstate(invalid="ignore"):
                m = {">=": x >= self.value, ">": x > self.value, "<=": x <= self.value, "<": x < self.value,
                     "==": x == self.value, "!=": x != self.value}[self.op]
            m = m & present
        return ~m if self.negate else m


def parse_filter(item: str | Mapping[str, Any], schema: SourceSchema) -> list[Filter]:
    """One filter (string or object) -> Filter(s), validated against the schema's columns and types."""
    if isinstance(item, str):
        m = _FILTER_RE.match(item)
        if not m:
            raise ToolInputError(f"cannot read filter {item!r}; write it like 'age_years>=65' or 'sex=female' "
                                 f"(operators: >=, >, <=, <, ==, !=)")
        col, op, raw = m.group(1), m.group(2), m.group(3).strip().strip("'\"")
        return [_make(col, op, raw, schema)]
    if isinstance(item, Mapping):
        col = item.get("column")
        if not isinstance(col, str):
            raise ToolInputError("a filter object needs 'column' plus 'op' and 'value' (or 'min'/'max')")
        out = []
        if "op" in item:
            out.append(_make(col, str(item["op"]), item.get("value"), schema))
        if item.get("min") is not None:
            out.append(_make(col, ">=", item["min"], schema))
        if item.get("max") is not None:
            out.append(_make(col, "<=", item["max"], schema))
        if not out:
            raise ToolInputError(f"filter on '{col}' needs 'op' and 'value', or 'min'/'max'")
        return out
    raise ToolInputError(f"cannot read filter {item!r}; write it like 'age_years>=65'")


def _make(col: str, op: str, raw: Any, schema: SourceSchema) -> Filter:
    cmap = schema.column_map()
    if col not in cmap:
        raise ToolInputError(f"filter column '{col}' is not a column of {schema.name}; valid columns: {', '.join(cmap)}")
    c = cmap[col]
    op = "==" if op == "=" else op
    if op not in (">=", ">", "<=", "<", "==", "!="):
        raise ToolInputError(f"unknown operator {op!r}; use one of >=, >, <=, <, ==, !=")
    if c.type is ColumnType.categorical:
        if op not in ("==", "!="):
            raise ToolInputError(f"'{col}' is categorical: use = or != with one of {', '.join(c.categories or [])}")
        match = [k for k in (c.categories or []) if k.lower() == str(raw).strip().lower()]
        if not match:
            raise ToolInputError(f"'{raw}' is not a category of '{col}'; valid: {', '.join(c.categories or [])}")
        return Filter(col, op, match[0])
    try:
        value = float(raw) if not isinstance(raw, bool) else float(int(raw))
    except (TypeError, ValueError):
        txt = str(raw).strip().lower()
        if c.type is ColumnType.binary and txt in ("yes", "true", "no", "false"):
            value = 1.0 if txt in ("yes", "true") else 0.0
        else:
            raise ToolInputError(f"filter on '{col}' needs a number (got {raw!r})") from None
    if not math.isfinite(value):
        raise ToolInputError(f"filter on '{col}' needs a finite number")
    if c.type is ColumnType.binary and (op not in ("==", "!=") or value not in (0.0, 1.0)):
        raise ToolInputError(f"'{col}' is binary (0/1): use '{col}=1' or '{col}=0'")
    return Filter(col, op, value)


def parse_filters(items: Iterable[str | Mapping[str, Any]] | None, schema: SourceSchema) -> list[Filter]:
    out: list[Filter] = []
    for item in items or []:
        out.extend(parse_filter(item, schema))
    return out


@dataclass
class Stratum:
    """A set of constraints with a share of the rows."""

    share: float
    filters: list[Filter] = field(default_factory=list)
    label: str = ""


def parse_proportions(spec: Mapping[str, Any] | Iterable[str] | None, schema: SourceSchema) -> list[list[Stratum]]:
    """Each group is one stratification (its strata's shares sum to 1); groups are crossed independently."""
    if not spec:
        return []
    items: list[tuple[str, float]] = []
    if isinstance(spec, Mapping):
        for key, val in spec.items():
            if isinstance(val, Mapping):
                for cat, share in val.items():
                    items.append((f"{key}={cat}", _share(share, f"{key}={cat}")))
            else:
                items.append((str(key), _share(val, str(key))))
    else:
        for s in spec:
            text, sep, share = str(s).rpartition(":")
            if not sep:
                raise ToolInputError(f"cannot read proportion {s!r}; write it like 'sex=female:0.4' or 'age_years>=65:60%'")
            items.append((text, _share(share, text)))
    groups: dict[str, list[tuple[Filter, float]]] = {}
    for text, share in items:
        fs = parse_filter(text, schema)
        if len(fs) != 1:
            raise ToolInputError(f"a proportion needs one condition, got {text!r}")
        groups.setdefault(fs[0].column, []).append((fs[0], share))
    out: list[list[Stratum]] = []
    for col, entries in groups.items():
        total = sum(s for _, s in entries)
        if total > 1 + 1e-9:
            raise ToolInputError(f"the proportions for '{col}' add up to {total:.0%}; they must not exceed 100%")
        strata = [Stratum(share, [f], f.text()) for f, share in entries]
        rest = 1.0 - total
        if rest > 1e-9:
            # The remainder: none of the named strata.
            strata.append(Stratum(rest, [Filter(f.column, f.op, f.value, negate=True) for f, _ in entries],
                                  "other " + col))
        out.append(strata)
    return out


def _share(val: Any, what: str) -> float:
    """A share is a fraction from 0 to 1 (0.4) or a percentage written with '%' (40%); nothing else.

    "1.5" is refused rather than read as 1.5 %: a number above 1 without '%' is ambiguous.
    """
    hint = "a fraction from 0 to 1 like 0.4, or a percentage with '%' like 40%"
    if isinstance(val, bool):
        raise ToolInputError(f"the share for {what!r} must be {hint}")
    txt = str(val).strip()
    is_pct = txt.endswith("%")
    num = txt[:-1].strip() if is_pct else txt
    try:
        share = float(num)
    except ValueError:
        raise ToolInputError(f"the share for {what!r} must be {hint} (got {txt!r})") from None
    if not math.isfinite(share):
        raise ToolInputError(f"the share for {what!r} must be {hint} (got {txt!r})")
    if is_pct:
        if not 0 <= share <= 100:
            raise ToolInputError(f"the share for {what!r} must be between 0% and 100% (got {txt!r})")
        return share / 100
    if not 0 <= share <= 1:
        raise ToolInputError(f"the share for {what!r} must be {hint} (got {txt!r}; write {txt}% for a percentage)"
                             if 1 < share <= 100 else f"the share for {what!r} must be {hint} (got {txt!r})")
    return share


def cross_strata(groups: list[list[Stratum]]) -> list[Stratum]:
    if not groups:
        return [Stratum(1.0, [], "all")]
    out = []
    for combo in itertools.product(*groups):
        share = float(np.prod([s.share for s in combo]))
        if share <= 0:
            continue
        out.append(Stratum(share, [f for s in combo for f in s.filters], " & ".join(s.label for s in combo)))
    return out


def allocate(n: int, shares: list[float]) -> list[int]:
    """Largest-remainder rounding: integer counts summing to exactly n."""
    total = sum(shares)
    raw = [n * s / total for s in shares] if total > 0 else [0.0] * len(shares)
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


Predicate = Callable[[pd.DataFrame], np.ndarray]
