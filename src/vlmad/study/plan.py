"""A study's plan: its options (:class:`StudyOptions`), the method specs and datasets of its main grid, and every
phase (main grid, per ablation axis its baseline and variants) as a :class:`~vlmad.bench.BenchmarkConfig`; no model
is loaded (see :mod:`vlmad.study.runner` for what the phases mean and how they run)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad.bench import BenchmarkConfig, DatasetSpec, method_spec
from vlmad.study.axes import AXES
from vlmad.study.spec import StudySpec
from vlmad_runtime.errors import VlmadError


@dataclass
class StudyOptions:
    """Run-time choices of a study (command-line options); nothing here changes what a row means except the
    weights/model options, which enter the method specs (and so the row keys)."""

    out: str | Path
    roots: dict[str, str | Path] = field(default_factory=dict)
    datasets: list[str] | None = None
    categories: list[str] | None = None
    model: list[str] | None = None
    pretrained: list[str] | None = None
    checkpoint: list[str] | None = None
    random_weights: bool = False
    precision: str | None = None
    sets: list[str] | None = None
    heads: list[str] | None = None
    shots: list[int] | None = None
    seeds: list[int] | None = None
    limit: int | None = None
    device: str = "cpu"
    batch_size: int = 8
    num_workers: int = 0
    force_protocol: bool = False
    retry_failed: bool = False
    use_cache: bool = True
    flops: bool = True
    progress: bool = False
    report: bool = True
    argv: list[str] | None = None
    # where rows run (vlmad.bench.executors); one Ray connection serves every phase
    executor: str = "local"
    ray_address: str | None = None
    cpus_per_row: float = 1.0
    gpus_per_row: float = 0.0
    row_retries: int = 2


@dataclass
class Phase:
    name: str
    config: BenchmarkConfig
    axis: str | None = None
    variant: str | None = None


@dataclass
class StudyPlan:
    spec: StudySpec
    datasets: list[DatasetSpec]
    methods: list[dict[str, Any]]
    phases: list[Phase]
    notes: list[str] = field(default_factory=list)


def build_study_methods(spec: StudySpec, options: StudyOptions) -> list[dict[str, Any]]:
    """Method specs of the main grid: the spec's options overlaid with the command line's model/weights/--set
    options; ``--artefact`` files (``--heads``) give one configuration each of the methods that load an artefact
    (labelled by the data it was made from)."""
    from vlmad.bench import build_method_specs
    from vlmad.methods.registry import get_spec

    names = list(dict.fromkeys(m.method for m in spec.methods))
    cli = {
        s["method"]: s["kwargs"]
        for s in build_method_specs(
            names,
            options.model,
            options.pretrained,
            options.checkpoint,
            options.random_weights,
            options.precision,
            options.sets,
        )
    }
    heads = [str(Path(h).expanduser().resolve()) for h in options.heads or []]
    if heads and not any(get_spec(n).artefact for n in names):
        raise VlmadError(
            "--artefact given but no method of the study loads an artefact",
            "drop --artefact/--heads or use another spec",
        )
    out: list[dict[str, Any]] = []
    for m in spec.methods:
        kwargs = dict(m.options)
        over = dict(cli.get(m.method, {}))
        if any(over.get(k) for k in ("pretrained", "checkpoint", "random_weights")):
            for k in ("pretrained", "checkpoint", "random_weights"):
                kwargs.pop(k, None)
        kwargs.update(over)
        art = get_spec(m.method).artefact
        if art is not None and heads:
            tags = [art.label(h) for h in heads]
            if len(set(tags)) < len(tags):
                tags = [Path(h).stem for h in heads]
            for h, tag in zip(heads, tags, strict=True):
                kw = {k: v for k, v in kwargs.items() if k != art.skip_option}
                kw[art.option] = h
                out.append(method_spec(m.method, label=m.label if len(heads) == 1 else f"{m.label}:{tag}", **kw))
        else:
            out.append(method_spec(m.method, label=m.label, **kwargs))
    return out


def _study_datasets(spec: StudySpec, options: StudyOptions) -> list[DatasetSpec]:
    wanted = options.datasets
    if wanted:
        bad = [d for d in wanted if d not in spec.dataset_kinds()]
        if bad:
            raise VlmadError(
                f"--datasets {bad[0]!r} is not a dataset of study {spec.name!r}",
                f"its datasets: {', '.join(spec.dataset_kinds())}",
            )
    unknown_roots = [k for k in options.roots if k not in spec.dataset_kinds()]
    if unknown_roots:
        raise VlmadError(
            f"--root {unknown_roots[0]}=... is not a dataset of study {spec.name!r}",
            f"its datasets: {', '.join(spec.dataset_kinds())}",
        )
    out = []
    for ds in spec.datasets:
        if wanted and ds.kind not in wanted:
            continue
        root = options.roots.get(ds.kind) or ds.root
        if root is None:
            raise VlmadError(
                f"study {spec.name!r} needs a root folder for {ds.kind}",
                f"pass --root {ds.kind}=PATH (or --datasets "
                f"{','.join(k for k in spec.dataset_kinds() if k != ds.kind) or ds.kind} to leave "
                "it out)",
            )
        cats = ds.categories
        if options.categories:
            picked = [c.split(":", 1)[1] for c in options.categories if c.startswith(f"{ds.kind}:")]
            plain = [c for c in options.categories if ":" not in c]
            cats = picked + plain if (picked or plain) else cats
            if not cats:
                continue
            if plain and not picked:
                from vlmad.data import load_dataset

                available = set(load_dataset(ds.kind, root).categories)
                cats = [c for c in plain if c in available]
                if not cats:
                    continue
        out.append(DatasetSpec(ds.kind, Path(root).expanduser(), cats))
    if not out:
        raise VlmadError("no dataset left to evaluate", "check --datasets / --categories")
    return out


def _artefact_fixes_backbone(m: Mapping[str, Any]) -> bool:
    from vlmad.methods.registry import get_spec

    art = get_spec(m["method"]).artefact
    return art is not None and art.fixes_backbone and bool(m["kwargs"].get(art.option))


def _check_artefacts(spec: StudySpec, methods: list[dict[str, Any]]) -> None:
    """Every method that needs an artefact file has one (or an explicit smoke-run option)."""
    from vlmad.methods.registry import get_spec

    for m in methods:
        mspec = get_spec(m["method"])
        if mspec.needs_artefact(m["kwargs"]):
            art = mspec.artefact
            raise VlmadError(
                f"study {spec.name!r}: {m['label']} needs its {art.kind} file ({art.help})",
                f"pass --artefact FILE (repeat for one configuration per file), or --set "
                f"{m['method']}.{art.skip_option}=true for a smoke run",
            )


#: the study's run-time options every phase's grid takes as they are (the same field of BenchmarkConfig)
_PASSED_TO_PHASES = (
    "out",
    "device",
    "batch_size",
    "num_workers",
    "force_protocol",
    "retry_failed",
    "use_cache",
    "flops",
    "progress",
    "argv",
    "executor",
    "ray_address",
    "cpus_per_row",
    "gpus_per_row",
    "row_retries",
)


def _phase_config(
    spec: StudySpec,
    options: StudyOptions,
    ds: list[DatasetSpec],
    specs: list[dict[str, Any]],
    k: list[int],
    s: list[int],
    tags: dict[str, Any],
) -> BenchmarkConfig:
    """One phase's grid with the study's run-time options."""
    return BenchmarkConfig(
        datasets=ds,
        methods=specs,
        shots=k,
        seeds=s,
        limit=options.limit if options.limit is not None else spec.limit,
        eval_resolution=spec.eval_resolution,
        aupro=spec.aupro,
        tags=tags,
        **{name: getattr(options, name) for name in _PASSED_TO_PHASES},
    )


def _ablated_methods(ab: Any, methods: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """The main-grid methods an ablation applies to; those whose artefact fixes what the axis varies are left
    out with a note."""
    from vlmad.methods.registry import get_spec

    axis = AXES[ab.axis]
    chosen = [
        m
        for m in methods
        if axis.applies_to(m["method"]) and (not ab.methods or m["label"] in ab.methods or m["method"] in ab.methods)
    ]
    fixed = [m for m in chosen if _artefact_fixes_backbone(m) and ab.axis in ("resolution", "backbone")]
    for m in fixed:
        notes.append(
            f"{ab.axis} ablation skipped for {m['label']}: its {get_spec(m['method']).artefact.kind} "
            "file fixes the backbone and input size (make one per variant to ablate it)"
        )
    return [m for m in chosen if m not in fixed]


def _ablation_phases(
    spec: StudySpec, options: StudyOptions, ab: Any, chosen: list[dict[str, Any]], ds: list[DatasetSpec], seeds: list
) -> list[Phase]:
    """An ablation's baseline phase (the study's own configuration) and one phase per non-default variant."""
    ab_seeds = ab.seeds or seeds
    phases = [
        Phase(f"{ab.axis}: baseline", _phase_config(spec, options, ds, chosen, ab.shots, ab_seeds, {}), ab.axis, None)
    ]
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for m in chosen:
        for v in AXES[ab.axis].variants(ab.values, m["method"], m["kwargs"], spec.base_dir):
            if v.is_default:
                continue
            vs = method_spec(m["method"], label=f"{m['label']} {ab.axis}={v.name}", **v.apply(m["kwargs"]))
            vs["study"] = {"axis": ab.axis, "variant": v.name, "base_label": m["label"], "detail": v.detail}
            by_variant.setdefault(v.name, []).append(vs)
    for name, specs in by_variant.items():
        tags = {"ablation": ab.axis, "variant": name}
        phases.append(
            Phase(f"{ab.axis}={name}", _phase_config(spec, options, ds, specs, ab.shots, ab_seeds, tags), ab.axis, name)
        )
    return phases


def plan_study(spec: StudySpec, options: StudyOptions) -> StudyPlan:
    """Every phase of the study as a :class:`BenchmarkConfig` (no model is loaded)."""
    datasets = _study_datasets(spec, options)
    methods = build_study_methods(spec, options)
    _check_artefacts(spec, methods)
    shots = options.shots or spec.shots
    seeds = options.seeds or spec.seeds
    phases = [Phase("main grid", _phase_config(spec, options, datasets, methods, shots, seeds, {}))]
    notes: list[str] = []
    for ab in spec.ablations:
        chosen = _ablated_methods(ab, methods, notes)
        ds = [d for d in datasets if not ab.datasets or d.kind in ab.datasets]
        if not chosen or not ds:
            continue
        phases += _ablation_phases(spec, options, ab, chosen, ds, seeds)
    return StudyPlan(spec, datasets, methods, phases, notes)
