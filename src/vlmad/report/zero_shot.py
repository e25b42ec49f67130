"""What the report needs to know about zero-shot-only methods and trained artefacts, read from the rows.

The report never asks a method by name (docs/architecture.md). A method without a few-shot mode (its spec's
``few_shot=False``, e.g. learned object-agnostic prompts) gets only K = 0 rows in a grid that has K > 0 for the
others, so "zero-shot only" is read off the data: its curve is a single point and the K-shot recommendations
name it next to the K-shot winner instead of leaving it out silently. A trained artefact (projection heads,
learned prompts) records its training data in the detector record as ``<artefact>_training_data``; the
cross-domain matrix reads any of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: appended to the label of a method measured at K = 0 only
ZERO_SHOT_ONLY = "zero-shot only"


def zero_shot_only(pairs: Iterable[tuple[str, int]]) -> set[str]:
    """Labels whose (label, shots) pairs are all K = 0 while another label has K > 0 (else none: a zero-shot
    study has nothing to set apart)."""
    by_label: dict[str, set[int]] = {}
    for label, shots in pairs:
        by_label.setdefault(label, set()).add(int(shots))
    if not any(k > 0 for ks in by_label.values() for k in ks):
        return set()
    return {label for label, ks in by_label.items() if ks == {0}}


def training_origin(row: Mapping[str, Any]) -> str | None:
    """The dataset kind a row's trained artefact was trained on (``" (synthetic anomalies)"`` for that regime),
    from the first ``*_training_data`` entry of its detector record; None when untrained or without artefact."""
    det = row.get("detector") or {}
    for key in sorted(det):
        data = det[key] if key.endswith("_training_data") else None
        if isinstance(data, Mapping) and data.get("kind"):
            regime = data.get("regime") or "cross-dataset"
            return str(data["kind"]) + (" (synthetic anomalies)" if regime == "synthetic" else "")
    return None
