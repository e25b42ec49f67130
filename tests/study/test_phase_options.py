"""Every run-time option a study shares by name with a benchmark grid reaches each phase's grid."""

from __future__ import annotations

from dataclasses import fields

from vlmad.bench import BenchmarkConfig
from vlmad.study.plan import _PASSED_TO_PHASES, StudyOptions

#: shared names a phase sets itself: the spec's default limit applies when the option is not given
SET_PER_PHASE = {"limit", "datasets", "shots", "seeds"}


def test_every_shared_option_is_passed_to_the_phases():
    shared = {f.name for f in fields(StudyOptions)} & {f.name for f in fields(BenchmarkConfig)}
    assert shared - SET_PER_PHASE == set(_PASSED_TO_PHASES)
