"""Studies: YAML-described evaluation campaigns on top of :mod:`vlmad.bench` — the main grid, ablations with their
own axes, deployment-threshold calibration and a self-contained report.

>>> from vlmad.study import load_study_spec, run_study, StudyOptions
>>> spec = load_study_spec("quick")  # a shipped preset, or a YAML path
>>> opts = StudyOptions(out="runs/quick", roots={"mvtec": "/data/mvtec", "visa": "/data/visa"})
>>> run_study(spec, opts)  # doctest: +SKIP

Command line: ``vlmad study SPEC --root mvtec=PATH --root visa=PATH --out DIR``, ``vlmad report DIR``,
``vlmad calibrate ...``.
"""

from vlmad.study.axes import AXES, Variant
from vlmad.study.calibration import (
    Calibration,
    Deployment,
    deploy_record,
    f1_optimal_threshold,
    load_deploy,
    normal_quantile_threshold,
    rates_at,
    validate_deploy,
    write_deploy,
)
from vlmad.study.factory import StudyDetectorFactory, restrict_stages
from vlmad.study.grid_calibration import calibrate_study
from vlmad.study.plan import StudyOptions, plan_study
from vlmad.study.runner import run_study
from vlmad.study.spec import StudySpec, list_presets, load_study_spec, parse_study_spec

__all__ = [
    "AXES",
    "Calibration",
    "Deployment",
    "StudyDetectorFactory",
    "StudyOptions",
    "StudySpec",
    "Variant",
    "calibrate_study",
    "deploy_record",
    "f1_optimal_threshold",
    "list_presets",
    "load_deploy",
    "load_study_spec",
    "normal_quantile_threshold",
    "parse_study_spec",
    "plan_study",
    "rates_at",
    "restrict_stages",
    "run_study",
    "validate_deploy",
    "write_deploy",
]
