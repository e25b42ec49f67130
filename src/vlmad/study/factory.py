"""The detector factory of a study: ablation variants of one method differ only in method options, so the loaded
CLIP backbones are shared between their detectors (the last few kept), and the ``stage_subset`` option of the stage
ablation is applied through the detector's own ``restrict_stages``."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from vlmad.bench.protocol import canonical
from vlmad.study.axes import STAGE_SUBSET_KEY


class StudyDetectorFactory:
    """``BenchmarkConfig.detector_factory`` of a study: shares loaded backbones between detectors (ablation
    variants of one method differ only in method options) and applies ``stage_subset``."""

    def __init__(self, max_backbones: int = 2) -> None:
        self.max_backbones = max(1, int(max_backbones))
        self._backbones: OrderedDict[str, Any] = OrderedDict()
        self.loads = 0

    def _backbone(self, bb_kwargs: dict[str, Any]) -> Any:
        from vlmad.methods.spec import build_backbone

        key = json.dumps(canonical(bb_kwargs), sort_keys=True)
        if key in self._backbones:
            self._backbones.move_to_end(key)
            return self._backbones[key]
        while len(self._backbones) >= self.max_backbones:
            self._backbones.popitem(last=False)
        bb = build_backbone(dict(bb_kwargs))
        self.loads += 1
        self._backbones[key] = bb
        return bb

    def __call__(self, spec: Mapping[str, Any]) -> Any:
        from vlmad.methods.registry import get_spec
        from vlmad.methods.spec import BACKBONE_KEYS

        kwargs = dict(spec["kwargs"])
        subset = kwargs.pop(STAGE_SUBSET_KEY, None)
        mspec = get_spec(spec["method"])
        if mspec.uses_backbone:
            mspec.check_options(kwargs)
            backbone = self._backbone(mspec.resolved_backbone(kwargs))
            detector = mspec.build(backbone, **{k: v for k, v in kwargs.items() if k not in BACKBONE_KEYS})
        else:
            detector = mspec.build(None, **kwargs)
        if subset:
            restrict_stages(detector, subset)
        return detector


def restrict_stages(detector: Any, stages: Sequence[int]) -> None:
    """Run a detector on a subset of its feature stages (the detector's own ``restrict_stages``)."""
    detector.restrict_stages(stages)
