"""PNG plots for cohort statistics and quality reports (matplotlib, Agg backend, imported lazily).

Figures are built with matplotlib.figure.Figure (no pyplot global state), titled in clinical
words with units and the number of patients, and written atomically. Plots of REAL data (quality
report) only ever show aggregates, and histogram bins / bars of fewer than `min_cell` real records
are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthehr.tools.engines import stats as se
from synthehr.tools.store.workspace import atomic_path

SYNTH_COLOR = "#1f77b4"
REAL_COLOR = "#ff7f0e"
THRESH_COLORS = ("#d62728", "#9467bd", "#8c564b", "#2ca02c", "#e377c2")


def _figure(w: float = 7.0, h: float = 4.5) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> str:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return str(path)


def _axis_label(info: Any) -> str:
    label = getattr(info, "title", None) or getattr(info, "name", "")
    unit = getattr(info, "unit", None)
    return f"{label} ({unit})" if unit and unit not in ("code", "0/1") else label


def _titles(ax: Any, main: str, sub: str = "") -> None:
    """A clinical title and, beneath it, where the numbers come from (wrapped to the figure's width)."""
    import textwrap

    width = max(40, int(ax.figure.get_figwidth() * 13))
    lines = textwrap.wrap(main, width) + (textwrap.wrap(sub, int(width * 1.15)) if sub else [])
    ax.set_title("\n".join(lines), fontsize=10.5, loc="center")


def _short(text: str, k: int = 32) -> str:
    return text if len(text) <= k else text[: k - 1].rstrip() + "…"


def _bins(values: pd.Series, kind: str) -> Any:
    """Histogram edges aligned with the values' resolution (no comb pattern from rounded values)."""
    v = np.unique(values.to_numpy())
    if len(v) < 2:
        return 10
    step = float(np.min(np.diff(v)))
    span = float(v[-1] - v[0])
    if kind == "integer":
        step = max(step, 1.0)
    if step <= 0 or span / step > 400:  # effectively continuous
        return min(40, max(10, int(math.sqrt(len(values)))))
    width = step * max(1, math.ceil(span / step / 40))
    return np.arange(v[0] - step / 2, v[-1] + width, width)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


# ---- one data set ------------------------------------------------------------------------------
def histogram(frame: pd.DataFrame, info: Any, path: Path, dataset_id: str, thresholds: Sequence[Any] = ()) -> str:
    """Histogram of a numeric observation with mean/median and guideline threshold lines."""
    s = pd.to_numeric(frame[info.name], errors="coerce").astype(float).dropna()
    fig = _figure(9.5, 4.8)
    ax = fig.add_subplot()
    n_missing = int(frame[info.name].isna().sum())
    if len(s):
        ax.hist(s, bins=_bins(s, info.kind), color=SYNTH_COLOR, alpha=0.85, edgecolor="white")
        ax.axvline(s.mean(), color="black", lw=1.2, label=f"mean {s.mean():.1f}")
        ax.axvline(s.median(), color="black", lw=1.2, ls=":", label=f"median {s.median():.1f}")
        for i, t in enumerate(t for t in thresholds if t.second_column is None and t.column == info.name):
            meets, ok = se.threshold_mask(frame, t)
            share = meets.sum() / ok.sum() if ok.sum() else float("nan")
            lab = f"{t.short}: {100 * share:.0f}% of patients" + (f" ({_short(t.label)})" if t.label else "")
            ax.axvline(t.value, color=THRESH_COLORS[i % len(THRESH_COLORS)], ls="--", lw=1.2, label=lab)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(_axis_label(info))
    ax.set_ylabel("Patients")
    miss = f", {n_missing} missing" if n_missing else ""
    _titles(ax, f"{info.title}: synthetic cohort (n={len(s)}{miss})", f"synthetic data set {dataset_id}")
    return _save(fig, path)


def bar(frame: pd.DataFrame, info: Any, path: Path, dataset_id: str) -> str:
    """Bar chart of the share of each category (or of yes/no for a 0/1 observation)."""
    s = frame[info.name]
    if info.kind == "binary":
        summ = se.binary_summary(s)
        labels, counts = ["no (0)", "yes (1)"], [summ["n"] - summ["count_1"], summ["count_1"]]
    else:
        summ = se.categorical_summary(s, info.categories)
        labels, counts = list(summ["counts"]), list(summ["counts"].values())
    n = summ["n"]
    fig = _figure(7.0, max(3.0, 0.45 * len(labels) + 1.5))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    ax.barh(y, counts, color=SYNTH_COLOR)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    for yi, c in zip(y, counts):
        ax.text(c, yi, f" {c} ({100 * c / n:.1f}%)" if n else "", va="center", fontsize=8)
    ax.set_xlabel("Patients")
    ax.set_xlim(0, max(counts or [1]) * 1.3 + 1)
    miss = f", {summ['missing']} missing" if summ["missing"] else ""
    _titles(ax, f"{info.title}: synthetic cohort (n={n}{miss})", f"synthetic data set {dataset_id}")
    return _save(fig, path)


def heatmap(matrix: pd.DataFrame, labels: Sequence[str], path: Path, title: str, vmin: float = -1, vmax: float = 1,
            cmap: str = "RdBu_r", note: str = "") -> str:
    """Annotated correlation heatmap."""
    k = len(labels)
    fig = _figure(max(5.5, 0.6 * k + 3), max(4.5, 0.55 * k + 2))
    ax = fig.add_subplot()
    m = matrix.to_numpy(dtype=float)
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    if k <= 16:
        for i in range(k):
            for j in range(k):
                if not math.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}".replace("-0.00", "0.00"), ha="center", va="center", fontsize=7,
                            color="white" if abs(m[i, j]) > 0.6 * max(abs(vmin), abs(vmax)) else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    _titles(ax, title, note)
    return _save(fig, path)


def grouped(frame: pd.DataFrame, info: Any, by: Sequence[str], infos: Mapping[str, Any], path: Path, dataset_id: str) -> str:
    """Box plot (numeric) or share-of-yes / category bars (binary, categorical) by one or two groups."""
    keys = frame[list(by)].astype(object).map(se.group_value)
    label = keys[by[0]] if len(by) == 1 else keys[by[0]] + " / " + keys[by[1]]
    order: list[str] = []
    for combo in se.group_by(frame, by, kinds={}):
        order.append(" / ".join(combo["group"].values()))
    by_title = " and ".join(getattr(infos.get(b), "title", b) for b in by)
    fig = _figure(max(6.5, 0.9 * len(order) + 2.5), 4.8)
    ax = fig.add_subplot()
    if info.numeric:
        vals = pd.to_numeric(frame[info.name], errors="coerce").astype(float)
        data = [vals[(label == g).to_numpy()].dropna().to_numpy() for g in order]
        ax.boxplot(data, showfliers=False, patch_artist=True, boxprops={"facecolor": "#aec7e8"},
                   medianprops={"color": "black"})
        ax.set_xticks(range(1, len(order) + 1), [f"{g}\n(n={len(d)})" for g, d in zip(order, data)], fontsize=8,
                      rotation=30 if len(order) > 6 else 0)
        for i, d in enumerate(data, start=1):
            if len(d):
                ax.plot(i, d.mean(), marker="D", color="black", ms=4)
        ax.set_ylabel(_axis_label(info))
        _titles(ax, f"{info.title} by {by_title}",
                f"box: median and IQR, whiskers: 1.5 IQR, diamond: mean; synthetic data set {dataset_id}, n={len(frame)}")
    else:
        if info.kind == "binary":
            cats, names = [1], ["yes"]
            vals = pd.to_numeric(frame[info.name].astype(object).where(frame[info.name].notna(), None), errors="coerce")
        else:
            names = list(info.categories or sorted(frame[info.name].dropna().astype(str).unique()))
            cats = names
            vals = frame[info.name].astype(object)
        x = np.arange(len(order))
        width = 0.8 / len(cats)
        ns = []
        for j, (c, nm) in enumerate(zip(cats, names)):
            shares = []
            for g in order:
                v = vals[(label == g).to_numpy()].dropna()
                shares.append(100 * float((v == c).mean()) if len(v) else 0.0)
                if j == 0:
                    ns.append(len(v))
            ax.bar(x + (j - (len(cats) - 1) / 2) * width, shares, width, label=nm)
        ax.set_xticks(x, [f"{g}\n(n={k})" for g, k in zip(order, ns)], fontsize=8, rotation=30 if len(order) > 6 else 0)
        ax.set_ylabel("% of patients in group")
        if len(cats) > 1:
            ax.legend(fontsize=8, frameon=False)
        _titles(ax, f"{info.title}{' (yes)' if info.kind == 'binary' else ''} by {by_title}",
                f"synthetic data set {dataset_id}, n={len(frame)}")
    return _save(fig, path)


def scatter(frame: pd.DataFrame, x: Any, y: Any, path: Path, dataset_id: str, stats: Mapping[str, Any] | None = None) -> str:
    a = pd.to_numeric(frame[x.name], errors="coerce").astype(float)
    b = pd.to_numeric(frame[y.name], errors="coerce").astype(float)
    both = a.notna() & b.notna()
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(a[both], b[both], s=6, alpha=0.4, color=SYNTH_COLOR)
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    st = stats or se.correlation(a, b)
    r = "n/a" if st.get("pearson") is None else f"{st['pearson']:.2f}"
    rho = "n/a" if st.get("spearman") is None else f"{st['spearman']:.2f}"
    _titles(ax, f"{y.title} vs {x.title}", f"n={int(both.sum())}, Pearson r={r}, Spearman rho={rho}; synthetic data set {dataset_id}")
    return _save(fig, path)


def dataset_plots(
    frame: pd.DataFrame,
    infos: Mapping[str, Any],
    items: Sequence[str],
    out_dir: Path,
    dataset_id: str,
    columns: Sequence[str],
    by: Sequence[str] = (),
    thresholds: Sequence[Any] = (),
    correlation: Sequence[str] | None = None,
    grouped_columns: Sequence[str] | None = None,
) -> list[str]:
    """Draw the requested plots (observation names, "heatmap", "grouped", "scatter"); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for item in items:
        if item == "heatmap":
            num = [c for c in columns if infos[c].numeric] or [c for c, i in infos.items() if i.numeric]
            if correlation:
                num = list(dict.fromkeys([*num, *correlation]))
            if len(num) < 2:
                continue
            m = se.correlation_matrix(frame, num)
            labels = [f"{infos[c].title}" for c in num]
            files.append(heatmap(m, labels, out_dir / "correlation_heatmap.png",
                                 f"Pearson correlation between observations (n={len(frame)})", note=f"synthetic data set {dataset_id}"))
        elif item == "grouped":
            groups = list(by)
            if not groups and "sex" in infos:
                groups = ["sex"]
            elif not groups and se.AGE_BAND in frame.columns:
                groups = [se.AGE_BAND]
            if not groups:
                continue
            for c in grouped_columns if grouped_columns is not None else columns:
                if c in groups:
                    continue
                name = f"grouped_{_safe(c)}_by_{'_'.join(_safe(g) for g in groups)}.png"
                files.append(grouped(frame, infos[c], groups, infos, out_dir / name, dataset_id))
        elif item == "scatter":
            if correlation and len(correlation) == 2:
                x, y = correlation
                files.append(scatter(frame, infos[x], infos[y], out_dir / f"scatter_{_safe(x)}_{_safe(y)}.png", dataset_id))
        else:
            info = infos[item]
            if info.numeric:
                files.append(histogram(frame, info, out_dir / f"hist_{_safe(item)}.png", dataset_id, thresholds))
            else:
                files.append(bar(frame, info, out_dir / f"bar_{_safe(item)}.png", dataset_id))
    return list(dict.fromkeys(files))


# ---- quality report ----------------------------------------------------------------------------
def marginals(real: pd.DataFrame, synth: pd.DataFrame, infos: Mapping[str, Any], columns: Sequence[str], path: Path,
              min_cell: int = 10, title: str = "") -> str:
    """Grid of real (held-out) vs synthetic distributions as shares; real cells under `min_cell` are not drawn."""
    cols = list(columns)
    k = len(cols)
    ncol = 4 if k > 6 else max(1, min(3, k))
    nrow = max(1, math.ceil(k / ncol))
    fig = _figure(3.3 * ncol, 2.6 * nrow + 0.6)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, cols):
        info = infos[c]
        if info.numeric:
            r = pd.to_numeric(real[c], errors="coerce").astype(float).dropna()
            s = pd.to_numeric(synth[c], errors="coerce").astype(float).dropna()
            lo = info.lower if info.lower is not None else min(r.min() if len(r) else 0, s.min() if len(s) else 0)
            hi = info.upper if info.upper is not None else max(r.max() if len(r) else 1, s.max() if len(s) else 1)
            both = pd.concat([r, s])
            if len(both):  # zoom to the central 99 % of the pooled values, inside the public bounds
                lo, hi = max(lo, float(both.quantile(0.005))), min(hi, float(both.quantile(0.995)))
            if not hi > lo:
                hi = lo + 1
            edges = np.linspace(lo, hi, 21)
            rc, _ = np.histogram(r.clip(lo, hi), bins=edges)
            sc, _ = np.histogram(s.clip(lo, hi), bins=edges)
            rc_shown = np.where(rc >= min_cell, rc, 0)
            centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
            if len(r):
                ax.bar(centers, rc_shown / len(r), width=width, color=REAL_COLOR, alpha=0.5, label="real (held out)")
            if len(s):
                ax.step(edges, np.append(sc / len(s), (sc / len(s))[-1:]), where="post", color=SYNTH_COLOR, lw=1.4, label="synthetic")
            ax.set_xlabel(_axis_label(info), fontsize=8)
        else:
            if info.kind == "binary":
                cats = ["0", "1"]
                conv = lambda v: pd.to_numeric(v.astype(object).where(v.notna(), None), errors="coerce").dropna().astype(int).astype(str)  # noqa: E731
            else:
                cats = list(info.categories or sorted(set(real[c].dropna().astype(str)) | set(synth[c].dropna().astype(str))))
                conv = lambda v: v.dropna().astype(str)  # noqa: E731
            r, s = conv(real[c]), conv(synth[c])
            rcounts = np.array([(r == x).sum() for x in cats])
            scounts = np.array([(s == x).sum() for x in cats])
            rshare = np.where(rcounts >= min_cell, rcounts, 0) / max(len(r), 1)
            x = np.arange(len(cats))
            ax.bar(x - 0.2, rshare, 0.4, color=REAL_COLOR, alpha=0.6, label="real (held out)")
            ax.bar(x + 0.2, scounts / max(len(s), 1), 0.4, color=SYNTH_COLOR, alpha=0.8, label="synthetic")
            ax.set_xticks(x, [str(v)[:14] for v in cats], rotation=35, ha="right", fontsize=7)
        ax.set_title(info.title[:38], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("share", fontsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper right", fontsize=8, frameon=False, ncols=2)
    fig.suptitle((title or "Real (held-out) vs synthetic distributions")
                 + f"\nshares of records; values beyond an axis fall in its end bin; real bins or bars with fewer than "
                 f"{min_cell} records are not drawn", fontsize=10)
    return _save(fig, path)


def dcr(d_train: np.ndarray, d_holdout: np.ndarray, path: Path, title: str = "") -> str:
    """Distances from each synthetic record to its closest training vs held-out record."""
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    hi = float(np.quantile(np.concatenate([d_train, d_holdout]), 0.99)) if len(d_train) else 1.0
    edges = np.linspace(0, max(hi, 1e-6), 41)
    ax.hist(np.clip(d_train, 0, hi), bins=edges, alpha=0.6, color=REAL_COLOR, label=f"to training records (median {np.median(d_train):.3f})")
    ax.hist(np.clip(d_holdout, 0, hi), bins=edges, alpha=0.6, color="#2ca02c", label=f"to held-out records (median {np.median(d_holdout):.3f})")
    ax.set_xlabel("distance to closest real record (scaled units)")
    ax.set_ylabel("synthetic records")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or "Distance to closest record: similar curves mean no memorisation", fontsize=10)
    return _save(fig, path)
