""" "Which method for me": recommendations computed from a run's measured numbers (no canned verdicts).

Questions answered per dataset (and across datasets when several share configurations):

* no examples at all (zero-shot): best image-level (classification) and pixel-level (segmentation) configuration;
* K normal reference images: best configuration at each K, and what the K images buy over zero-shot;
* a latency budget on given hardware: the accuracy/latency Pareto front, i.e. the most accurate configuration
  under each budget.

A winner whose lead is smaller than the larger seed spread of the two (or than 0.5 points) is reported as a tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vlmad.report.figures import pareto_front
from vlmad.report.zero_shot import ZERO_SHOT_ONLY, zero_shot_only

TIE_POINTS = 0.5
METRIC_NAMES = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1_max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1_max": "pixel F1-max",
    "aupro": "AUPRO",
    "aupro_legacy200": "AUPRO-200",
}


@dataclass
class Entry:
    """One configuration's macro numbers on one dataset (percent)."""

    dataset: str
    label: str
    method: str
    shots: int
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    ms_per_image: float | None = None
    hardware: str | None = None
    random_weights: bool = False

    def value(self, metric: str) -> float | None:
        return (self.metrics.get(metric) or (None, None))[0]

    def spread(self, metric: str) -> float:
        return (self.metrics.get(metric) or (None, None))[1] or 0.0


@dataclass
class Recommendation:
    topic: str
    dataset: str
    text: str
    numbers: dict[str, Any] = field(default_factory=dict)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _best(entries: Sequence[Entry], metric: str) -> tuple[Entry | None, Entry | None]:
    have = sorted((e for e in entries if e.value(metric) is not None), key=lambda e: -e.value(metric))
    if not have:
        return None, None
    best = have[0]
    runner = next((e for e in have[1:] if e.method != best.method), have[1] if len(have) > 1 else None)
    return best, runner


def _lead(best: Entry, runner: Entry | None, metric: str) -> tuple[str, bool, float | None]:
    if runner is None:
        return "the only configuration measured", False, None
    margin = best.value(metric) - runner.value(metric)
    tie = margin < max(TIE_POINTS, best.spread(metric), runner.spread(metric))
    if tie:
        return (
            (f"a tie within the spread with {runner.label} ({_fmt(runner.value(metric))}, {margin:+.1f} pt)"),
            True,
            margin,
        )
    return f"{margin:.1f} pt ahead of {runner.label} ({_fmt(runner.value(metric))})", False, margin


def _seg_metric(entries: Sequence[Entry]) -> str | None:
    for m in ("aupro", "pixel_auroc", "pixel_ap"):
        if any(e.value(m) is not None for e in entries):
            return m
    return None


def _zero_shot(ds: str, zero: Sequence[Entry], classification: str) -> list[Recommendation]:
    """Without examples: the best configuration for image-level decisions and for anomaly maps."""
    out: list[Recommendation] = []
    best, runner = _best(zero, classification)
    if best is not None:
        lead, tie, margin = _lead(best, runner, classification)
        out.append(
            Recommendation(
                "zero-shot classification",
                ds,
                f"No examples at hand (zero-shot), deciding good/bad per image: {best.label} — "
                f"{METRIC_NAMES[classification]} {_fmt(best.value(classification))} %, {lead}.",
                {
                    "best": best.label,
                    "value": best.value(classification),
                    "runner_up": runner and runner.label,
                    "margin": margin,
                    "tie": tie,
                },
            )
        )
    seg = _seg_metric(zero)
    if seg is not None:
        best, runner = _best(zero, seg)
        lead, tie, margin = _lead(best, runner, seg)
        out.append(
            Recommendation(
                "zero-shot segmentation",
                ds,
                f"No examples at hand, localising defects (anomaly maps): {best.label} — {METRIC_NAMES[seg]} "
                f"{_fmt(best.value(seg))} %, {lead}.",
                {
                    "best": best.label,
                    "metric": seg,
                    "value": best.value(seg),
                    "runner_up": runner and runner.label,
                    "margin": margin,
                    "tie": tie,
                },
            )
        )
    return out


def _zero_only_text(mine: Sequence[Entry], metric: str) -> str:
    """Methods without a few-shot mode are not in a K-shot ranking; name them with their zero-shot number, so the
    K-shot winner is read against what needs no reference image at all."""
    only = zero_shot_only((e.method, e.shots) for e in mine)
    named = [e for e in mine if e.method in only and e.value(metric) is not None]
    if not named:
        return ""
    items = ", ".join(f"{e.label} {_fmt(e.value(metric))} %" for e in named)
    return f" Not in this comparison, {ZERO_SHOT_ONLY} (no few-shot mode): {items}."


def _few_shot(ds: str, mine: Sequence[Entry], zero: Sequence[Entry], classification: str) -> list[Recommendation]:
    """Per K > 0: the best configuration, what the K images change over its zero-shot, the best for maps."""
    out: list[Recommendation] = []
    for k in sorted({e.shots for e in mine if e.shots > 0}):
        at_k = [e for e in mine if e.shots == k]
        best, runner = _best(at_k, classification)
        if best is None:
            continue
        lead, tie, margin = _lead(best, runner, classification)
        zs = [e for e in zero if e.method == best.method and e.value(classification) is not None]
        gain = ""
        if zs:
            delta = best.value(classification) - zs[0].value(classification)
            gain = (
                f"; the {k} image(s) change it by {delta:+.1f} pt over its zero-shot "
                f"{_fmt(zs[0].value(classification))} %"
            )
        seg_k = _seg_metric(at_k)
        seg_text = ""
        if seg_k is not None:
            sbest, _ = _best(at_k, seg_k)
            seg_text = (
                f" For maps at K={k}: {sbest.label} ({METRIC_NAMES[seg_k]} {_fmt(sbest.value(seg_k))} %)."
                if sbest is not None
                else ""
            )
        out.append(
            Recommendation(
                f"{k}-shot",
                ds,
                f"With {k} normal reference image(s) per product: {best.label} — {METRIC_NAMES[classification]} "
                f"{_fmt(best.value(classification))} %, {lead}{gain}.{seg_text}"
                + _zero_only_text(mine, classification),
                {"best": best.label, "value": best.value(classification), "shots": k, "tie": tie, "margin": margin},
            )
        )
    return out


def _latency(ds: str, mine: Sequence[Entry], classification: str) -> list[Recommendation]:
    """Per hardware: the Pareto front of accuracy vs ms/image, read as budgets."""
    out: list[Recommendation] = []
    for hw in sorted({e.hardware for e in mine if e.hardware and e.ms_per_image}):
        pts = [e for e in mine if e.hardware == hw and e.ms_per_image and e.value(classification) is not None]
        if not pts:
            continue
        flags = pareto_front([(e.ms_per_image, e.value(classification)) for e in pts])
        front = sorted((e for e, f in zip(pts, flags, strict=True) if f), key=lambda e: e.ms_per_image)
        steps = "; ".join(
            f"≤ {e.ms_per_image:.3g} ms/image: {e.label} ({_fmt(e.value(classification))} %)" for e in front
        )
        fastest, most = front[0], front[-1]
        if len(front) == 1:
            text = (
                f"Latency budget on {hw}: {fastest.label} is both the fastest ({fastest.ms_per_image:.3g} "
                f"ms/image) and the most accurate ({_fmt(fastest.value(classification))} %) — no trade-off "
                "to make."
            )
        else:
            text = f"Latency budget on {hw}: the most accurate configuration under each budget is {steps}."
            text += (
                f" Going from the fastest ({fastest.label}) to the most accurate ({most.label}) costs "
                f"{most.ms_per_image / fastest.ms_per_image:.1f}x the time for "
                f"{most.value(classification) - fastest.value(classification):+.1f} pt."
            )
        out.append(
            Recommendation(
                "latency budget",
                ds,
                text,
                {"hardware": hw, "front": [(e.label, e.ms_per_image, e.value(classification)) for e in front]},
            )
        )
    return out


def _across(entries: Sequence[Entry], datasets: list[str], classification: str) -> list[Recommendation]:
    """With several datasets: the ranking of methods averaged over all of them, per K."""
    out: list[Recommendation] = []
    by_cfg: dict[tuple[str, int], list[Entry]] = {}
    for e in entries:
        if e.value(classification) is not None:
            by_cfg.setdefault((e.method, e.shots), []).append(e)
    full = {k: v for k, v in by_cfg.items() if {e.dataset for e in v} == set(datasets)}
    for k in sorted({s for _, s in full}):
        cands = [(m, sum(e.value(classification) for e in v) / len(v)) for (m, s), v in full.items() if s == k]
        if len(cands) < 2:
            continue
        cands.sort(key=lambda t: -t[1])
        (m1, v1), (m2, v2) = cands[0], cands[1]
        out.append(
            Recommendation(
                "across datasets",
                " + ".join(datasets),
                f"Averaged over {' and '.join(datasets)} at K={k}: {m1} ({v1:.1f} %) over {m2} ({v2:.1f} %), "
                f"{v1 - v2:+.1f} pt in {METRIC_NAMES[classification]}.",
                {"shots": k, "ranking": cands},
            )
        )
    return out


def recommend(entries: Sequence[Entry], classification: str = "image_auroc") -> list[Recommendation]:
    """The recommendations of a run, dataset by dataset (zero-shot, few-shot, latency), then across datasets."""
    out: list[Recommendation] = []
    datasets = list(dict.fromkeys(e.dataset for e in entries))
    for ds in datasets:
        mine = [e for e in entries if e.dataset == ds]
        zero = [e for e in mine if e.shots == 0]
        out += _zero_shot(ds, zero, classification)
        out += _few_shot(ds, mine, zero, classification)
        out += _latency(ds, mine, classification)
    if len(datasets) > 1:
        out += _across(entries, datasets, classification)
    return out
