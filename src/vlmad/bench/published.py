"""Published reference numbers and the rule for when a vlmad result may sit next to one.

The numbers (macro averages, percent) live in ``published_results.json`` with their sources. A published number
is shown next to a result only when the protocol matches: same method (registry name), dataset and shot count;
real (non-random) weights that are the published model and pretrained tag; the published input size, MLP
activation (where the published model states one: APRIL-GAN's reference builds ViT-L-14-336 at 518 px without
QuickGELU, so a QuickGELU run, or one that did not record its activation, is not comparable) and default method
settings (APRIL-GAN: raw folder names in the prompts, as the reference); evaluation at the model input
resolution; the macro mean over the full official
category list, every image scored (no ``--limit``, no skipped files), no overridden protocol check; the same
transductive setting; and the metric computed the same way (AUPRO variant). Otherwise the cell reads "n/a" and
a footnote says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from vlmad.data.mvtec import MVTEC_CATEGORIES
from vlmad.data.visa import VISA_CATEGORIES

PUBLISHED_FILE = Path(__file__).with_name("published_results.json")
OFFICIAL_CATEGORIES: dict[str, tuple[str, ...]] = {"mvtec": MVTEC_CATEGORIES, "visa": VISA_CATEGORIES}
DATASET_NAMES = {"mvtec": "MVTec AD", "visa": "VisA"}


def default_settings(method: str) -> dict[str, Any]:
    """Method settings the published numbers were produced with (the spec's ``published_settings``)."""
    from vlmad.methods.registry import get_spec
    from vlmad_runtime.errors import UnknownNameError

    try:
        return dict(get_spec(method).published_settings)
    except UnknownNameError:
        return {}


def neutral_options(method: str) -> set[str]:
    """Method options every published-protocol run passes (checked elsewhere, e.g. by check_protocol)."""
    from vlmad.methods.registry import get_spec
    from vlmad_runtime.errors import UnknownNameError

    try:
        return set(get_spec(method).published_neutral)
    except UnknownNameError:
        return set()


@lru_cache(maxsize=4)
def load_published(path: str | None = None) -> dict[str, Any]:
    data = json.loads(Path(path or PUBLISHED_FILE).read_text())
    return data


def find_entry(method: str, dataset: str, shots: int, published: dict[str, Any] | None = None) -> dict[str, Any] | None:
    published = published or load_published()
    for entry in published["entries"]:
        if entry["method"] == method and entry["dataset"] == dataset and int(entry["shots"]) == int(shots):
            return entry
    return None


def entries_for(dataset: str, published: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    published = published or load_published()
    return [e for e in published["entries"] if e["dataset"] == dataset]


@dataclass
class Comparison:
    """A published value (percent) or the reason there is none."""

    value: float | None
    reason: str | None = None
    label: str | None = None


def protocol_mismatch(
    facts: dict[str, Any], entry: dict[str, Any], published: dict[str, Any] | None = None
) -> str | None:
    """Why a column of results (``facts``, built by :mod:`vlmad.bench.tables`) is not comparable with ``entry``;
    None when it is. Reasons are short sentences for footnotes."""
    published = published or load_published()
    if facts.get("random_weights"):
        return "random weights"
    model = published.get("models", {}).get(entry["method"], {})
    weights = facts.get("weights") or {}
    if model:
        arch, tag = weights.get("model"), weights.get("tag")
        if arch != model["model"] or tag != model["pretrained"]:
            got = f"{arch}/{tag}" if tag else f"{arch} ({weights.get('source', 'unknown')} weights, tag unknown)"
            return f"weights {got} are not the published {model['model']}/{model['pretrained']}"
        if facts.get("image_size") is not None and int(facts["image_size"]) != int(model["image_size"]):
            return f"input size {facts['image_size']} px, published at {model['image_size']} px"
    info = facts.get("info") or {}
    reason = _activation_mismatch(model, info)
    if reason:
        return reason
    settings = default_settings(entry["method"])
    for key, want in settings.items():
        if key in info and info[key] != want:
            return f"non-default setting {key}={info[key]} (published: {want})"
    allowed = set(settings) | neutral_options(entry["method"])
    extra = {k: v for k, v in (facts.get("method_options") or {}).items() if k not in allowed}
    if extra:
        return "non-default method options (" + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) + ")"
    if bool(facts.get("transductive")) != bool(entry.get("transductive", False)):
        return (
            "published number is transductive (test-set normalisation), this run is not"
            if entry.get("transductive")
            else "this run is transductive, the published number is not"
        )
    if facts.get("eval_resolution", "input") != "input":
        return f"evaluated at {facts['eval_resolution']} resolution; published at the model input resolution"
    if facts.get("limit") is not None:
        return f"--limit {facts['limit']}: a subset of the test images"
    if facts.get("skipped_images"):
        return f"{facts['skipped_images']} test image(s) could not be read and were skipped"
    if facts.get("forced"):
        return "protocol check overridden with --force-protocol"
    official = OFFICIAL_CATEGORIES.get(entry["dataset"], ())
    cats = set(facts.get("categories") or ())
    if official and cats != set(official):
        if cats - set(official):
            return (
                f"categories are not the official {DATASET_NAMES.get(entry['dataset'], entry['dataset'])} "
                f"ones (e.g. {sorted(cats - set(official))[0]!r})"
            )
        return f"macro over {len(cats)} of {len(official)} categories"
    if not facts.get("complete", True):
        return "some (category, seed) rows are missing"
    return None


def _activation_mismatch(model: dict[str, Any], info: dict[str, Any]) -> str | None:
    """The published model's MLP activation must be the run's recorded one (same weights, other activation:
    other features; APRIL-GAN maps differ by ~0.15). Unrecorded is not comparable either."""
    want = model.get("activation")
    if not want:
        return None
    got = info.get("activation")
    if got is None:
        return f"activation not recorded (published with {want})"
    if got != want:
        return f"activation {got}, published with {want}"
    return None


def compare(facts: dict[str, Any], metric: str, published: dict[str, Any] | None = None) -> Comparison:
    """The published value of ``metric`` for a column of results; ``value=None`` with a ``reason`` when a
    published number exists but the protocol differs; ``value=None, reason=None`` when nothing is published."""
    published = published or load_published()
    entry = find_entry(facts["method"], facts["dataset_kind"], facts["shots"], published)
    if entry is None:
        return Comparison(None)
    if metric not in entry["metrics"]:
        if metric == "aupro" and "aupro_legacy200" in entry["metrics"]:
            return Comparison(
                None,
                f"{entry['label']}'s AUPRO uses the 200-threshold approximation: compare "
                "AUPRO-200 (run with --aupro both)",
                entry["label"],
            )
        if metric == "aupro_legacy200" and "aupro" in entry["metrics"]:
            return Comparison(
                None,
                f"{entry['label']} reports AUPRO, not the 200-threshold approximation (see the AUPRO column)",
                entry["label"],
            )
        return Comparison(None, None, entry["label"])
    reason = protocol_mismatch(facts, entry, published)
    if reason is not None:
        return Comparison(None, reason, entry["label"])
    return Comparison(float(entry["metrics"][metric]), None, entry["label"])
