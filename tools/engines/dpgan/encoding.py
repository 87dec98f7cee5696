"""Schema-driven encoding of mixed tabular records for the DP conditional GAN.

Everything here is derived from PUBLIC information only: the column types, the public bounds
of numeric columns and the declared categories. No statistic is read off the data, so building
an encoder costs no privacy. (What *is* learnt from data - the joint frequencies of the
conditioning columns - lives in `privacy.py` and is charged.)

Layout of one encoded record
----------------------------
* a numeric column (continuous / integer): one value in [-1, 1] (min-max over the public bounds),
  followed, when `missing_allowed`, by a 2-way one-hot missingness indicator [present, missing].
  A missing value is encoded as value 0 with indicator "missing" - never imputed.
  The generator produces a numeric value as a categorical choice among `numeric_bins` equal-width
  bins of the public range (sampled, so the output cannot collapse to one point) plus a
  continuous offset inside the bin; the discriminator sees only the resulting value. At sampling time
  the value is placed uniformly inside the chosen bin instead (networks._within_bin: the learnt
  offset collapsed to one point per bin).
* a binary / categorical column: a one-hot over its categories (binary: "0", "1"), plus a final
  "missing" slot when `missing_allowed`.
* conditioning columns are not generated: they are one-hot encoded into a separate condition
  vector (same layout as a categorical block) which both networks receive as input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from synthehr.tools.store.schema import Column, ColumnType, SourceSchema

MISSING = "<missing>"


@dataclass(frozen=True)
class Block:
    """One column's slice of the encoded vector."""

    name: str
    kind: str  # "numeric" | "discrete"
    start: int  # first index in the (generated or condition) vector
    width: int  # total width including the missingness part
    categories: tuple[str, ...] = ()  # discrete: labels of the one-hot slots (incl. MISSING if allowed)
    has_missing: bool = False
    lower: float = 0.0
    upper: float = 1.0
    integer: bool = False
    raw_start: int = 0  # first index in the generator's raw output
    raw_width: int = 0
    bins: int = 0  # numeric: bins in the generator's output (0: one tanh value)

    @property
    def value_index(self) -> int:
        return self.start

    @property
    def missing_slice(self) -> slice:
        """Numeric blocks: the [present, missing] indicator; discrete: the whole one-hot."""
        if self.kind == "numeric":
            return slice(self.start + 1, self.start + 3)
        return slice(self.start, self.start + self.width)


def discrete_labels(col: Column) -> list[str]:
    cats = ["0", "1"] if col.type is ColumnType.binary else list(col.categories or [])
    return cats + ([MISSING] if col.missing_allowed else [])


class TableEncoder:
    """Encodes/decodes frames of a SourceSchema; `conditions` are the conditioning columns."""

    def __init__(self, schema: SourceSchema, conditions: list[str], numeric_bins: int = 0):
        cmap = schema.column_map()
        for c in conditions:
            if c not in cmap:
                raise ValueError(f"condition '{c}' is not a column of {schema.name}; columns: {', '.join(cmap)}")
            if cmap[c].type not in (ColumnType.binary, ColumnType.categorical):
                raise ValueError(f"condition '{c}' must be a binary or categorical column, not {cmap[c].type.value}")
        if len(set(conditions)) != len(conditions):
            raise ValueError("conditions repeat")
        self.schema = schema
        self.conditions = list(conditions)
        self.columns = [c for c in schema.columns]
        self.numeric_bins = int(numeric_bins)
        self.blocks: list[Block] = []
        pos, raw = 0, 0
        for col in self.columns:
            if col.name in self.conditions:
                continue
            if col.is_numeric:
                width = 3 if col.missing_allowed else 1
                raw_width = (self.numeric_bins + 1 if self.numeric_bins else 1) + (2 if col.missing_allowed else 0)
                self.blocks.append(Block(col.name, "numeric", pos, width, (), col.missing_allowed,
                                         float(col.lower), float(col.upper), col.type is ColumnType.integer,
                                         raw, raw_width, self.numeric_bins))
            else:
                labels = discrete_labels(col)
                width = raw_width = len(labels)
                self.blocks.append(Block(col.name, "discrete", pos, width, tuple(labels), col.missing_allowed,
                                         raw_start=raw, raw_width=raw_width))
            pos += width
            raw += raw_width
        self.data_dim = pos
        self.raw_dim = raw
        self.cond_blocks: list[Block] = []
        pos = 0
        for name in self.conditions:
            col = cmap[name]
            labels = discrete_labels(col)
            self.cond_blocks.append(Block(name, "discrete", pos, len(labels), tuple(labels), col.missing_allowed))
            pos += len(labels)
        self.cond_dim = pos

    # ---- description (stored in the manifest; public) -------------------------------------
    def describe(self) -> dict:
        return {
            "conditions": self.conditions,
            "data_dim": self.data_dim,
            "raw_dim": self.raw_dim,
            "numeric_bins": self.numeric_bins,
            "cond_dim": self.cond_dim,
            "blocks": [b.__dict__ | {"categories": list(b.categories)} for b in self.blocks],
            "cond_blocks": [b.__dict__ | {"categories": list(b.categories)} for b in self.cond_blocks],
            "scaling": "min-max over public bounds to [-1, 1]; explicit missingness indicators",
        }

    @property
    def cond_sizes(self) -> list[int]:
        return [b.width for b in self.cond_blocks]

    # ---- discrete codes ------------------------------------------------------------------
    def discrete_codes(self, series: pd.Series, block: Block) -> np.ndarray:
        """Index of each value among the block's labels (missing -> the MISSING slot)."""
        labels = list(block.categories)
        col = self.schema.column(block.name)
        if col.type is ColumnType.binary:
            vals = pd.to_numeric(series, errors="coerce").astype("Float64")
            out = np.where(vals.isna().to_numpy(), -1, vals.fillna(0).to_numpy(dtype=float).astype(int))
        else:
            mapping = {c: i for i, c in enumerate(labels) if c != MISSING}
            # Vectorised: factorise once, map the (few) distinct values, then index (sampling calls this on
            # hundreds of thousands of records).
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
            lut = np.array([mapping.get(str(v), -2) for v in uniques] + [-1], dtype=int)
            out = lut[np.where(codes < 0, len(uniques), codes)]
            if (out == -2).any():
                raise ValueError(f"column '{block.name}' has values outside its declared categories")
        if (out == -1).any():
            if not block.has_missing:
                raise ValueError(f"column '{block.name}' has missing values but missing_allowed is false")
            out = np.where(out == -1, len(labels) - 1, out)
        return out

    def encode_conditions_codes(self, frame: pd.DataFrame) -> np.ndarray:
        """(n, k) integer codes of the conditioning columns."""
        if not self.cond_blocks:
            return np.zeros((len(frame), 0), dtype=int)
        return np.stack([self.discrete_codes(frame[b.name], b) for b in self.cond_blocks], axis=1)

    def codes_to_onehot(self, codes: np.ndarray) -> np.ndarray:
        out = np.zeros((codes.shape[0], self.cond_dim), dtype=np.float32)
        rows = np.arange(codes.shape[0])
        for j, b in enumerate(self.cond_blocks):
            out[rows, b.start + codes[:, j]] = 1.0
        return out

    # ---- marginal cells (for the DP marginal tables) -------------------------------------
    def marginal_cells(self, block: Block, bins: int) -> int:
        """Cells of a block's marginal table: `bins` equal-width public bins [+ missing]; discrete: labels."""
        if block.kind == "numeric":
            return max(bins, 1) + (1 if block.has_missing else 0)
        return block.width

    def marginal_codes(self, frame: pd.DataFrame, block: Block, bins: int) -> np.ndarray:
        """Cell index of each record in the block's marginal table (bins over the PUBLIC range)."""
        if block.kind == "discrete":
            return self.discrete_codes(frame[block.name], block)
        v = pd.to_numeric(frame[block.name], errors="coerce").astype("Float64")
        miss = v.isna().to_numpy()
        x = v.fillna(block.lower).to_numpy(dtype=float)
        k = max(bins, 1)
        idx = np.clip(np.floor((x - block.lower) / (block.upper - block.lower) * k), 0, k - 1).astype(int)
        return np.where(miss, k, idx)

    # ---- encode --------------------------------------------------------------------------
    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(data matrix, condition one-hot matrix), float32."""
        n = len(frame)
        x = np.zeros((n, self.data_dim), dtype=np.float32)
        rows = np.arange(n)
        for b in self.blocks:
            s = frame[b.name]
            if b.kind == "numeric":
                v = pd.to_numeric(s, errors="coerce").astype("Float64")
                miss = v.isna().to_numpy()
                if miss.any() and not b.has_missing:
                    raise ValueError(f"column '{b.name}' has missing values but missing_allowed is false")
                vals = v.fillna(b.lower).to_numpy(dtype=float).clip(b.lower, b.upper)
                scaled = (vals - b.lower) / (b.upper - b.lower) * 2.0 - 1.0
                x[:, b.start] = np.where(miss, 0.0, scaled)
                if b.has_missing:
                    x[rows, b.start + 1 + miss.astype(int)] = 1.0
            else:
                codes = self.discrete_codes(s, b)
                x[rows, b.start + codes] = 1.0
        c = self.codes_to_onehot(self.encode_conditions_codes(frame))
        return x, c

    # ---- decode --------------------------------------------------------------------------
    def decode(self, numeric: dict[str, np.ndarray], missing: dict[str, np.ndarray], discrete: dict[str, np.ndarray],
               cond_codes: np.ndarray) -> pd.DataFrame:
        """Build a typed frame from decoded parts.

        numeric: block name -> scaled values in [-1, 1] (clipped again here);
        missing: numeric block name -> bool mask; discrete: block name -> chosen label index;
        cond_codes: (n, k) chosen condition label indices.
        """
        n = cond_codes.shape[0]
        cols: dict[str, pd.Series] = {}
        for b in self.blocks:
            if b.kind == "numeric":
                t = np.clip(numeric[b.name], -1.0, 1.0)
                v = (t + 1.0) / 2.0 * (b.upper - b.lower) + b.lower
                if b.integer:
                    v = np.clip(np.rint(v), np.ceil(b.lower), np.floor(b.upper))
                else:
                    v = np.clip(v, b.lower, b.upper)
                miss = missing.get(b.name)
                cols[b.name] = self._numeric_series(b, v, miss)
            else:
                cols[b.name] = self._discrete_series(b, discrete[b.name])
        for j, b in enumerate(self.cond_blocks):
            cols[b.name] = self._discrete_series(b, cond_codes[:, j] if n else np.zeros(0, dtype=int))
        return pd.DataFrame({c.name: cols[c.name] for c in self.columns})

    def _numeric_series(self, b: Block, v: np.ndarray, miss: np.ndarray | None) -> pd.Series:
        if b.integer:
            arr = pd.array(v.astype(np.int64), dtype="Int64")
            if miss is not None:
                arr[miss] = pd.NA
            return pd.Series(arr)
        out = v.astype(float)
        if miss is not None:
            out = np.where(miss, np.nan, out)
        return pd.Series(out, dtype=float)

    def _discrete_series(self, b: Block, codes: np.ndarray) -> pd.Series:
        col = self.schema.column(b.name)
        labels = list(b.categories)
        is_missing = np.array([labels[i] == MISSING for i in range(len(labels))])[codes] if len(codes) else np.zeros(0, bool)
        if col.type is ColumnType.binary:
            arr = pd.array(np.where(is_missing, 0, codes).astype(np.int8), dtype="Int8")
            arr[is_missing] = pd.NA
            return pd.Series(arr)
        cats = list(col.categories or [])
        safe = np.where(is_missing, -1, codes)
        return pd.Series(pd.Categorical.from_codes(safe, categories=cats))

    # ---- values <-> condition codes ------------------------------------------------------
    def cond_code(self, name: str, value: object) -> int:
        """The label index of `value` for conditioning column `name` (ValueError listing valid values)."""
        b = next(b for b in self.cond_blocks if b.name == name)
        return label_index(self.schema.column(name), b, value)


def label_index(col: Column, block: Block, value: object) -> int:
    labels = list(block.categories)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        if MISSING in labels:
            return labels.index(MISSING)
        raise ValueError(f"column '{col.name}' is never missing")
    if col.type is ColumnType.binary:
        txt = str(value).strip().lower()
        alias = {"1": "1", "1.0": "1", "true": "1", "yes": "1", "0": "0", "0.0": "0", "false": "0", "no": "0"}
        if txt in alias:
            return labels.index(alias[txt])
        raise ValueError(f"column '{col.name}' is binary: use 0 or 1 (got {value!r})")
    txt = str(value).strip()
    for i, lab in enumerate(labels):
        if lab != MISSING and lab.lower() == txt.lower():
            return i
    valid = [lab for lab in labels if lab != MISSING]
    raise ValueError(f"'{value}' is not a category of '{col.name}'; valid: {', '.join(valid)}")
