"""Report figures (matplotlib, headless): each function returns PNG bytes ready to embed.

Values are percent. Every figure of a random-weights run carries :data:`RANDOM_WEIGHTS_STAMP` as a red banner and a
diagonal watermark, so a figure copied out of the report still says what it is. Only the object-oriented
``matplotlib.figure.Figure`` API is used (no pyplot state, no GUI backend needed). Margins are set by hand in inches
(matplotlib's automatic layout engines cost ~1 s per figure on a small CPU).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

DPI = 100
#: inches: the report's content width (1224 px at 100 dpi)
PAGE_WIDTH = 12.2


@dataclass
class Series:
    """One bar group member / curve: a label and per-x means with optional spreads (None = no value)."""

    label: str
    values: list[float | None]
    errors: list[float | None] = field(default_factory=list)
    x: list[float] = field(default_factory=list)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _layout(
    fig,
    left: float = 0.75,
    right: float = 0.25,
    top: float = 0.55,
    bottom: float = 0.6,
    wspace: float = 0.3,
    hspace: float = 0.55,
    stamp: bool = False,
) -> None:
    """Margins in inches (a random-weights banner adds room at the bottom)."""
    w, h = fig.get_size_inches()
    if stamp:  # the banner gets its own strip; the plots keep their size
        h += 0.3
        fig.set_size_inches(w, h)
        bottom += 0.3
    fig.subplots_adjust(
        left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h, wspace=wspace, hspace=hspace
    )


def _title(fig, text: str) -> None:
    h = fig.get_size_inches()[1]
    fig.suptitle(text, fontsize=11, y=1 - 0.08 / h, va="top")


def _legend_width(labels: Sequence[str]) -> float:
    return 0.45 + 0.062 * max((len(s) for s in labels), default=4)


def _outside_legend(fig, ax, top: float) -> None:
    handles, names = ax.get_legend_handles_labels()
    if handles:
        w, h = fig.get_size_inches()
        fig.legend(
            handles, names, loc="upper right", bbox_to_anchor=(1 - 0.05 / w, 1 - top / h), fontsize=8, frameon=False
        )


def stamp_figure(fig, random_weights: bool) -> None:
    if not random_weights:
        return
    fig.text(
        0.5,
        0.5,
        RANDOM_WEIGHTS_STAMP,
        ha="center",
        va="center",
        rotation=20,
        fontsize=22,
        color="red",
        alpha=0.18,
        zorder=100,
    )
    h = fig.get_size_inches()[1]
    fig.text(
        0.5,
        0.06 / h,
        f"WARNING: {RANDOM_WEIGHTS_STAMP}",
        ha="center",
        va="bottom",
        color="white",
        fontsize=10,
        fontweight="bold",
        bbox={"facecolor": "#b00020", "edgecolor": "none", "pad": 3},
    )


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _nan(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _bar_panel(
    ax, metric: str, series: Sequence[Series], categories: Sequence[str], colors: dict, rotate: bool
) -> None:
    """One metric's grouped bars (one group per category, one bar per series) with its axis, ticks and limits."""
    x = np.arange(len(categories))
    bar_w = 0.8 / max(1, len(series))
    lows = []
    for i, s in enumerate(series):
        vals = _nan(s.values)
        errs = _nan(s.errors) if s.errors else None
        if errs is not None:
            errs = np.where(np.isnan(errs), 0.0, errs)
        ax.bar(
            x - 0.4 + bar_w * (i + 0.5),
            np.nan_to_num(vals, nan=0.0),
            bar_w,
            yerr=errs,
            label=s.label,
            color=colors[s.label],
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
        if np.isfinite(vals).any():
            lows.append(float(np.nanmin(vals)))
    ax.set_xticks(
        x,
        list(categories),
        rotation=30 if rotate else 0,
        ha="right" if rotate else "center",
        fontsize=8,
        rotation_mode="anchor" if rotate else "default",
    )
    ax.set_title(metric, fontsize=10)
    ax.set_ylabel("%")
    lo = min(lows) if lows else 0.0
    ax.set_ylim(max(0.0, 10 * math.floor((lo - 5) / 10)), 100.0)
    ax.grid(axis="y", alpha=0.3)


def category_bars(
    categories: Sequence[str], panels: Sequence[tuple[str, Sequence[Series]]], title: str, random_weights: bool = False
) -> bytes:
    """Grouped bars, one panel per metric: one group per category (the caller may append e.g. "macro mean"),
    one bar per configuration (error bars: the series' spreads). Panels are laid out in a grid."""
    n_cat = len(categories)
    n_ser = max(1, max((len(s) for _, s in panels), default=1))
    labels = list(dict.fromkeys(s.label for _, series in panels for s in series))
    legend_w = _legend_width(labels)
    room = PAGE_WIDTH - legend_w - 0.8  # shown at its natural size in the report
    min_panel = min(room, max(3.4, 0.2 * n_cat * n_ser + 1.2))
    ncols = max(1, min(len(panels), int((room + 0.6) // (min_panel + 0.6))))
    nrows = max(1, math.ceil(len(panels) / ncols))
    ncols = max(1, math.ceil(len(panels) / nrows))  # balance: 4 panels -> 2 x 2, not 3 + 1
    panel_w = (room - 0.6 * (ncols - 1)) / ncols
    rotate = n_cat > 5 or max((len(c) for c in categories), default=0) * n_cat > 9 * panel_w
    bottom = 0.5 + (0.065 * max((len(c) for c in categories), default=0) if rotate else 0.0)
    fig = _figure(panel_w * ncols + 0.6 * (ncols - 1) + 0.8 + legend_w, (2.4 + bottom) * nrows + 0.7)
    _layout(
        fig,
        left=0.65,
        right=legend_w,
        top=0.75,
        bottom=bottom,
        wspace=0.6 / panel_w,
        hspace=(bottom + 0.45) / 2.4,
        stamp=random_weights,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    for ax, (metric, series) in zip(axes, panels, strict=False):
        _bar_panel(ax, metric, series, categories, colors, rotate)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    _outside_legend(fig, axes[0], 0.75)
    _title(fig, title)
    stamp_figure(fig, random_weights)
    return to_png(fig)


def shot_curves(panels: Sequence[tuple[str, Sequence[Series]]], title: str, random_weights: bool = False) -> bytes:
    """One panel per metric: metric vs number of shots K, one line per method (error bars: std over seeds)."""
    n = max(1, len(panels))
    labels = sorted({s.label for _, series in panels for s in series})
    legend_w = _legend_width(labels)
    room = PAGE_WIDTH - legend_w - 0.8
    ncols = max(1, min(n, int((room + 0.8) // (3.4 + 0.8))))
    nrows = math.ceil(n / ncols)
    ncols = math.ceil(n / nrows)
    panel_w = (room - 0.8 * (ncols - 1)) / ncols
    fig = _figure(PAGE_WIDTH, 3.0 * nrows + 1.0 * (nrows - 1) + 1.3)
    _layout(
        fig,
        left=0.8,
        right=legend_w,
        top=0.75,
        bottom=0.55,
        wspace=0.8 / panel_w,
        hspace=1.0 / 3.0,
        stamp=random_weights,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    colors = dict(zip(labels, _colors(len(labels)), strict=True))
    for ax, (metric, series) in zip(axes, panels, strict=False):
        shots: set[float] = set()
        for s in series:
            xs = np.asarray(s.x, dtype=float)
            ys = _nan(s.values)
            errs = _nan(s.errors) if s.errors else None
            ax.errorbar(
                xs,
                ys,
                yerr=None if errs is None else np.nan_to_num(errs),
                marker="o",
                capsize=3,
                label=s.label,
                color=colors[s.label],
            )
            shots |= set(xs.tolist())
        ax.set_xticks(sorted(shots) or [0])
        ax.set_xlabel("K (0 = zero-shot)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
    _outside_legend(fig, axes[0], 0.75)
    _title(fig, title)
    stamp_figure(fig, random_weights)
    return to_png(fig)


@dataclass
class ParetoPoint:
    label: str
    ms: float
    value: float
    front: bool = False
    main: bool = True


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (ms, value) points no other point beats on both (lower ms and higher value)."""
    flags = []
    for i, (ms, v) in enumerate(points):
        dominated = any((m2 <= ms and v2 >= v) and (m2 < ms or v2 > v) for j, (m2, v2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def _plain_log_ticks(ax) -> None:
    """Log axis with plain numbers (0.5, 1, 2, 5, 10 ...) instead of 2x10^0."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def pareto_plot(
    panels: Sequence[tuple[str, Sequence[ParetoPoint]]], hardware: str, metric: str, random_weights: bool = False
) -> bytes:
    """Accuracy vs latency, one panel per dataset; the Pareto front is drawn as a step line, labelled."""
    n = max(1, len(panels))
    fig = _figure(5.6 * n + 0.8 * (n - 1) + 1.0, 4.4)
    _layout(fig, left=0.75, right=0.25, top=0.4, bottom=0.6, wspace=0.8 / 5.6, stamp=random_weights)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, points) in zip(axes, panels, strict=False):
        for p in points:
            ax.scatter(
                [p.ms],
                [p.value],
                s=40 if p.main else 18,
                color="#1f77b4" if p.main else "#999999",
                marker="o" if p.main else "s",
                zorder=3,
                alpha=1.0 if p.main else 0.7,
            )
        front = sorted([p for p in points if p.front], key=lambda p: p.ms)
        if front:
            ax.step(
                [p.ms for p in front],
                [p.value for p in front],
                where="post",
                color="#d62728",
                lw=1.2,
                zorder=2,
                label="Pareto front",
            )
            for p in front:
                ax.annotate(p.label, (p.ms, p.value), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("ms / image (log scale)")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{name} — {hardware}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if front:
            ax.legend(fontsize=8, loc="lower right")
    stamp_figure(fig, random_weights)
    return to_png(fig)


def matrix_plot(
    rows: Sequence[str],
    cols: Sequence[str],
    values: np.ndarray,
    notes: Sequence[Sequence[str]],
    metric: str,
    title: str,
    random_weights: bool = False,
) -> bytes:
    """A trained-on x evaluated-on heatmap; cells without a value show their note (e.g. "refused: leakage")."""
    fig = _figure(2.0 * len(cols) + 3.6, 0.9 * len(rows) + 1.6)
    _layout(fig, left=1.9, right=1.2, top=0.45, bottom=0.5, stamp=random_weights)
    ax = fig.add_subplot()
    shown = np.ma.masked_invalid(np.asarray(values, dtype=float))
    im = ax.imshow(shown, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i][j]
            text = f"{v:.1f}" if np.isfinite(v) else (notes[i][j] or "—")
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9,
                color="white" if np.isfinite(v) and v < 60 else "black",
            )
    ax.set_xticks(range(len(cols)), [f"evaluated on {c}" for c in cols])
    ax.set_yticks(range(len(rows)), [f"trained on {r}" for r in rows])
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=f"{metric} (%)")
    stamp_figure(fig, random_weights)
    return to_png(fig)


def delta_bars(
    labels: Sequence[str],
    panels: Sequence[tuple[str, Sequence[float | None], Sequence[float | None]]],
    title: str,
    random_weights: bool = False,
) -> bytes:
    """Horizontal bars of deltas (percentage points) against the default, one panel per metric."""
    n = max(1, len(panels))
    label_w = 0.3 + 0.055 * max((len(x) for x in labels), default=4)
    fig = _figure(label_w + 3.6 * n + 0.4 * (n - 1) + 0.3, 0.3 * len(labels) + 1.5)
    _layout(fig, left=label_w, right=0.25, top=0.65, bottom=0.45, wspace=0.4 / 3.6, stamp=random_weights)
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    y = np.arange(len(labels))
    for k, (ax, (metric, deltas, errors)) in enumerate(zip(axes, panels, strict=False)):
        d = _nan(deltas)
        e = np.nan_to_num(_nan(errors)) if errors else None
        colors = ["#2ca02c" if (v >= 0) else "#d62728" for v in np.nan_to_num(d)]
        ax.barh(y, np.nan_to_num(d), xerr=e, color=colors, capsize=2)
        ax.axvline(0, color="black", lw=0.8)
        if not np.any(np.abs(np.nan_to_num(d)) > 1e-9):
            ax.set_xlim(-1, 1)
            ax.set_xticks([-1, 0, 1])
            ax.text(0.5, 0.5, "no change", transform=ax.transAxes, ha="center", va="center", color="#555555")
        ax.set_title(f"Δ {metric} (pt)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        if k == 0:
            ax.set_yticks(y, list(labels), fontsize=8)
            ax.invert_yaxis()
    _title(fig, title)
    stamp_figure(fig, random_weights)
    return to_png(fig)
