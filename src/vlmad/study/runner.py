"""Running a study: the main grid and every ablation through :func:`vlmad.bench.run_benchmark`, then calibration and
the report.

Phases (each one ``run_benchmark`` call on the same run folder, so rows of all phases live in one
``results.jsonl`` and resume the same way):

1. **main**: datasets x methods x shots x seeds of the spec, ``tags = {}``.
2. per ablation axis, the **baseline** (the axis's default value = the study's own configuration on the ablation's
   shots/seeds/datasets, ``tags = {}``): its rows have the same keys as the main grid's, so they are computed once.
3. per ablation axis and value, the **variants** (``tags = {"ablation": AXIS, "variant": NAME}``; method label
   ``"<label> <axis>=<value>"``; the method spec carries ``study = {axis, variant, base_label, detail}``, recorded in
   each row's ``method_spec``).

A phase whose rows are all in ``results.jsonl`` is not started at all, so re-running a finished study recomputes
nothing (and writes nothing but the report). Detectors are built by :class:`StudyDetectorFactory`, which keeps the
last CLIP backbones loaded across phases (ablation variants share them) and implements the ``stage_subset``
option of the APRIL-GAN stage ablation. An ablation variant whose detector cannot be built (e.g. missing weights of
another backbone) is logged, recorded in ``study.json`` and shown in the report; the other phases still run.

Then calibration of the main grid (:mod:`vlmad.study.grid_calibration`: one ``deploy.json`` per configuration and
category), the gallery maps and the report. The plan (options, method specs, phases) lives in
:mod:`vlmad.study.plan`, the detector factory in :mod:`vlmad.study.factory`; this module runs them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlmad.bench import plan_grid, run_benchmark
from vlmad.bench.protocol import canonical
from vlmad.bench.results import RESULTS_FILE, ResultsStore, RunLock
from vlmad.study.factory import StudyDetectorFactory, restrict_stages
from vlmad.study.files import STUDY_FILE, load_study_file  # noqa: F401  (re-exported)
from vlmad.study.grid_calibration import CALIBRATION_DIR, DEPLOY_DIR, calibrate_study, deploy_path
from vlmad.study.plan import Phase, StudyOptions, StudyPlan, build_study_methods, plan_study
from vlmad.study.spec import StudySpec
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.fileio import atomic_write_text

__all__ = [
    "CALIBRATION_DIR",
    "DEPLOY_DIR",
    "Phase",
    "StudyDetectorFactory",
    "StudyOptions",
    "StudyPlan",
    "build_study_methods",
    "calibrate_study",
    "deploy_path",
    "plan_study",
    "restrict_stages",
    "run_study",
]
Log = Callable[[str], None]


def _final_statuses(options: StudyOptions) -> set[str]:
    if options.retry_failed:
        return {"ok"}
    return {"ok", "error"} | (set() if options.force_protocol else {"refused"})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _public_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: canonical(v) for k, v in spec.items()}


def _write_study_file(out: Path, plan: StudyPlan, options: StudyOptions, invocation: dict[str, Any]) -> None:
    path = out / STUDY_FILE
    try:
        previous = json.loads(path.read_text()).get("invocations", [])
    except (OSError, ValueError, AttributeError):
        previous = []
    if previous and previous[-1].get("started") == invocation.get("started"):
        previous = previous[:-1]
    data = {
        "name": plan.spec.name,
        "spec": plan.spec.as_dict(),
        "roots": {d.kind: str(Path(d.root).resolve()) for d in plan.datasets},
        "datasets": [
            {"kind": d.kind, "root": str(Path(d.root).resolve()), "categories": d.categories} for d in plan.datasets
        ],
        "methods": [_public_spec(m) for m in plan.methods],
        "phases": [
            {
                "name": p.name,
                "axis": p.axis,
                "variant": p.variant,
                "tags": p.config.tags,
                "methods": [_public_spec(m) for m in p.config.methods],
                "shots": p.config.shots,
                "seeds": p.config.seeds,
                "datasets": [d.kind for d in p.config.datasets],
            }
            for p in plan.phases
        ],
        "options": {k: canonical(v) for k, v in options.__dict__.items() if k not in ("argv",)},
        "invocations": previous + [invocation],
    }
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def run_study(spec: StudySpec, options: StudyOptions, log: Log | None = None) -> Path:
    """Run (or resume) a study; returns the run folder (results.jsonl, scores/, deploy/, report.html, ...)."""
    say = log or (lambda _msg: None)
    out = Path(options.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    from vlmad.bench.executors import executor_scope

    with RunLock(out, ".study.lock", "vlmad study"), executor_scope(options.executor, options.ray_address):
        plan = plan_study(spec, options)
        factory = StudyDetectorFactory()
        invocation: dict[str, Any] = {
            "started": _now(),
            "argv": options.argv if options.argv is not None else list(sys.argv),
            "computed": 0,
            "phases_run": [],
            "notes": list(plan.notes),
            "failed_phases": [],
        }
        _write_study_file(out, plan, options, invocation)
        for note in plan.notes:
            say(f"[yellow]note:[/] {note}")
        final = _final_statuses(options)
        for phase in plan.phases:
            phase.config.detector_factory = factory
            plans, _ = plan_grid(phase.config)
            done = ResultsStore(out / RESULTS_FILE).keys(final)
            todo = [p for p in plans if p.key not in done]
            if not todo:
                say(f"{phase.name}: all {len(plans)} row(s) already in {out / RESULTS_FILE}")
                continue
            say(f"[bold]{phase.name}[/]: {len(todo)} of {len(plans)} row(s) to compute")
            try:
                run_benchmark(phase.config)
            except VlmadError as err:
                if phase.variant is None:  # the main grid and baselines must run: stop with the message
                    raise
                # an ablation variant that cannot be built (e.g. weights of another backbone) must not cost the
                # rest of the study: recorded, reported, retried on the next run
                say(f"[red]{phase.name} failed[/]: {err.message}" + (f" ({err.hint})" if err.hint else ""))
                invocation["failed_phases"].append({"phase": phase.name, "error": err.message, "hint": err.hint})
            finally:
                try:
                    invocation["computed"] += int(json.loads((out / "run.json").read_text())["latest"]["computed"])
                except (OSError, ValueError, KeyError, TypeError):
                    pass
                invocation["phases_run"].append(phase.name)
                _write_study_file(out, plan, options, invocation)
        deploy = calibrate_study(out, plan, factory, options, say)
        invocation.update(finished=_now(), deploy_files=len(deploy))
        _write_study_file(out, plan, options, invocation)
        if options.report:
            from vlmad.report.build import build_report, compute_gallery_maps

            compute_gallery_maps(out, factory, options.device, say)  # stored: the report only reads the folder
            say("writing the report")
            build_report(out, log=say)
    return out
