"""Study specs: a YAML file (or a shipped preset) describing a whole evaluation campaign.

A study is the benchmark grid of :mod:`vlmad.bench` (datasets x methods x shots x seeds) plus ablations, each with
its own axis (see :mod:`vlmad.study.axes`), deployment-threshold calibration and a report. Example::

    name: my-study
    description: WinCLIP vs APRIL-GAN on both benchmarks
    datasets: [mvtec, visa]            # roots come from the command line: --root mvtec=PATH --root visa=PATH
    methods:
      - winclip
      - method: aprilgan
        options: {allow_untrained: true}   # create_detector keywords
    shots: [0, 1, 2, 4]
    seeds: [0, 1, 2]
    limit: null                        # N test images per category (balanced), null = all
    ablations:
      prompts: {values: [full, states-only, templates-only, single], shots: [0, 1]}
      window_scales: {values: ["2", "3", "2,3", "2,3+image"]}
      stages: {values: [each, all]}
      resolution: {values: [default, 0.75x, 1.5x]}
      backbone: {values: [default, {model: ViT-B-16, pretrained: laion2b_s34b_b88k}]}
    calibration: {mode: normal-quantile, quantile: 0.99, max_images: 100}
    report: {gallery_shots: 0, gallery_seed: null}

Presets ship in ``vlmad/study/presets/*.yaml`` (``seed-full``, ``prompt-ablation``, ``quick``); a spec argument is
a preset name or a path. Relative paths inside a spec (dataset roots, prompt files) are relative to the YAML file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlmad_runtime.errors import UnknownNameError, VlmadError

PRESET_DIR = Path(__file__).with_name("presets")
CALIBRATION_MODES = ("normal-quantile", "f1-optimal-test", "none")
_TOP_KEYS = {
    "name",
    "description",
    "datasets",
    "methods",
    "shots",
    "seeds",
    "limit",
    "eval_resolution",
    "aupro",
    "ablations",
    "calibration",
    "report",
}


@dataclass
class StudyDataset:
    """A dataset of the study: reader kind, optional category subset, optional root (else from the CLI)."""

    kind: str
    categories: list[str] | None = None
    root: str | None = None


@dataclass
class StudyMethod:
    """A method of the study: registry name, display label, ``create_detector`` options."""

    method: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AblationSpec:
    """One ablation axis: its values (the default value is the study's own configuration), and where it runs."""

    axis: str
    values: list[Any]
    methods: list[str] | None = None
    shots: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] | None = None
    datasets: list[str] | None = None


@dataclass
class CalibrationSpec:
    """How the study picks a deployment threshold per (method configuration, category).

    ``normal-quantile``: the ``quantile`` of scores on held-out normal images (train split, references excluded,
    at most ``max_images`` of them, a seeded draw). ``f1-optimal-test``: F1-optimal threshold on the labelled
    test split's stored scores (no extra compute, but the threshold is then fitted on the evaluation images:
    optimistic, for illustration). ``none``: no deploy files. ``shots``: which shot counts get a deploy file
    (default: all of the main grid).
    """

    mode: str = "normal-quantile"
    quantile: float = 0.99
    max_images: int | None = 100
    shots: list[int] | None = None
    seed: int = 0


@dataclass
class ReportSpec:
    """Report options: which main-grid row the heatmap gallery shows (shots, seed), images per kind."""

    gallery_shots: int | None = None
    gallery_seed: int | None = None
    gallery_per_kind: int = 1
    gallery: bool = True


@dataclass
class StudySpec:
    name: str
    datasets: list[StudyDataset]
    methods: list[StudyMethod]
    shots: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])
    description: str = ""
    limit: int | None = None
    eval_resolution: str | int = "input"
    aupro: str = "exact"
    ablations: list[AblationSpec] = field(default_factory=list)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    source: str = ""
    base_dir: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySpec:
        """Inverse of :meth:`as_dict` (used to read ``study.json`` back)."""
        d = dict(data)
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            datasets=[StudyDataset(**x) for x in d["datasets"]],
            methods=[StudyMethod(**x) for x in d["methods"]],
            shots=list(d.get("shots", [0])),
            seeds=list(d.get("seeds", [0])),
            limit=d.get("limit"),
            eval_resolution=d.get("eval_resolution", "input"),
            aupro=d.get("aupro", "exact"),
            ablations=[AblationSpec(**x) for x in d.get("ablations", [])],
            calibration=CalibrationSpec(**d.get("calibration", {})),
            report=ReportSpec(**d.get("report", {})),
            source=d.get("source", ""),
            base_dir=d.get("base_dir"),
        )

    def dataset_kinds(self) -> list[str]:
        return [d.kind for d in self.datasets]


# ---------------------------------------------------------------------------------------------------------------
# loading


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out: dict[str, str] = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        try:
            data = _read_yaml(path)
            out[path.stem] = " ".join(str(data.get("description", "")).split())
        except VlmadError:
            out[path.stem] = "(unreadable)"
    return out


def resolve_spec_path(spec: str | Path) -> Path:
    """A preset name (``quick``) or a YAML path."""
    text = str(spec)
    preset = PRESET_DIR / f"{text}.yaml"
    if "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml")) and preset.is_file():
        return preset
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise UnknownNameError(
        f"no study preset or spec file {text!r}",
        f"presets: {', '.join(list_presets()) or '(none)'}; or pass a YAML file path",
    )


def load_study_spec(spec: str | Path | Mapping[str, Any]) -> StudySpec:
    """Parse and validate a study spec: a preset name, a YAML path or an already-parsed mapping."""
    if isinstance(spec, Mapping):
        return parse_study_spec(spec, source="<mapping>", base_dir=None)
    path = resolve_spec_path(spec)
    source = path.stem if path.parent == PRESET_DIR else str(path)
    return parse_study_spec(_read_yaml(path), source=source, base_dir=str(path.parent.resolve()))


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise VlmadError(f"cannot read study spec {path}: {err}", "fix the YAML syntax") from err
    if not isinstance(data, dict):
        raise VlmadError(f"study spec {path} must be a YAML mapping", "see `vlmad study --help` for an example")
    return data


def _int_list(value: Any, what: str, minimum: int = 0) -> list[int]:
    from vlmad.bench.protocol import parse_int_list

    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (str, Sequence)):
        raise VlmadError(f"study spec: {what} must be a list of integers, got {value!r}")
    return parse_int_list(value, what, minimum)


def _names(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise VlmadError(f"study spec: {what} must be a list of names, got {value!r}")
    return list(value)


def parse_study_spec(data: Mapping[str, Any], source: str = "", base_dir: str | None = None) -> StudySpec:
    """Validate a study spec mapping (from YAML) into a :class:`StudySpec`; every mistake is a VlmadError naming
    the key and the accepted values."""
    from vlmad.bench.protocol import parse_aupro, parse_eval_resolution

    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise VlmadError(
            f"study spec {source}: unknown key {unknown[0]!r}", f"known keys: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = str(data.get("name") or (Path(source).stem if source else "study"))

    datasets = _parse_datasets(data, source, base_dir)
    kinds = [d.kind for d in datasets]
    methods = _parse_methods(data, source)

    shots = _int_list(data.get("shots", [0]), "shots")
    seeds = _int_list(data.get("seeds", [0]), "seeds")
    limit = data.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise VlmadError(f"study spec {source}: limit must be a positive integer or null, got {limit!r}")
    eval_res = parse_eval_resolution(data.get("eval_resolution", "input"))
    aupro = str(data.get("aupro", "exact"))
    parse_aupro(aupro)

    ablations = _parse_ablations(data, source, base_dir, kinds, methods)
    cal = _parse_calibration(data, source)
    report = _parse_report(data, source)

    return StudySpec(
        name=name,
        description=" ".join(str(data.get("description", "")).split()),
        datasets=datasets,
        methods=methods,
        shots=shots,
        seeds=seeds,
        limit=limit,
        eval_resolution=eval_res,
        aupro=aupro,
        ablations=ablations,
        calibration=cal,
        report=report,
        source=source,
        base_dir=base_dir,
    )


def _parse_datasets(data: Mapping[str, Any], source: str, base_dir: str | None) -> list[StudyDataset]:
    from vlmad.data import DATASET_KINDS

    datasets: list[StudyDataset] = []
    for item in data.get("datasets") or []:
        if isinstance(item, str):
            item = {"kind": item}
        if not isinstance(item, Mapping) or "kind" not in item:
            raise VlmadError(
                f"study spec {source}: dataset entry {item!r} needs a 'kind'",
                "e.g. datasets: [mvtec, visa] or [{kind: mvtec, categories: [bottle]}]",
            )
        kind = str(item["kind"]).lower()
        if kind not in DATASET_KINDS:
            raise UnknownNameError(
                f"study spec {source}: unknown dataset kind {kind!r}", f"use one of {', '.join(DATASET_KINDS)}"
            )
        extra = sorted(set(item) - {"kind", "categories", "root"})
        if extra:
            raise VlmadError(
                f"study spec {source}: dataset {kind}: unknown key {extra[0]!r}", "dataset keys: kind, categories, root"
            )
        root = item.get("root")
        if root is not None and base_dir is not None and not Path(str(root)).expanduser().is_absolute():
            root = str(Path(base_dir) / str(root))
        datasets.append(
            StudyDataset(
                kind, _names(item.get("categories"), f"{kind} categories"), None if root is None else str(root)
            )
        )
    if not datasets:
        raise VlmadError(f"study spec {source}: no datasets", "e.g. datasets: [mvtec, visa]")
    kinds = [d.kind for d in datasets]
    if len(set(kinds)) != len(kinds):
        raise VlmadError(f"study spec {source}: dataset kind listed twice", "list each dataset kind once")
    return datasets


def _parse_methods(data: Mapping[str, Any], source: str) -> list[StudyMethod]:
    from vlmad.methods.registry import available_methods, get_spec

    methods: list[StudyMethod] = []
    for item in data.get("methods") or []:
        if isinstance(item, str):
            item = {"method": item}
        if not isinstance(item, Mapping) or "method" not in item:
            raise VlmadError(
                f"study spec {source}: method entry {item!r} needs a 'method'",
                "e.g. methods: [winclip, {method: aprilgan, options: {allow_untrained: true}}]",
            )
        extra = sorted(set(item) - {"method", "label", "options"})
        if extra:
            raise VlmadError(
                f"study spec {source}: method {item['method']}: unknown key {extra[0]!r}",
                "method keys: method, label, options",
            )
        if item["method"] not in available_methods():
            raise UnknownNameError(
                f"study spec {source}: unknown method {item['method']!r}",
                f"available: {', '.join(available_methods())}",
            )
        options = dict(item.get("options") or {})
        get_spec(str(item["method"])).check_options(options)  # a typo fails here, before any model loads
        methods.append(StudyMethod(str(item["method"]), str(item.get("label") or item["method"]), options))
    if not methods:
        raise VlmadError(f"study spec {source}: no methods", "e.g. methods: [winclip, aprilgan]")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise VlmadError(f"study spec {source}: method label used twice", "give each method entry its own label")
    return methods


def _parse_ablations(
    data: Mapping[str, Any], source: str, base_dir: str | None, kinds: list[str], methods: list[StudyMethod]
) -> list[AblationSpec]:
    from vlmad.study.axes import AXES

    labels = [m.label for m in methods]
    ablations: list[AblationSpec] = []
    raw = data.get("ablations") or []
    items = (
        [{"axis": k, **(v if isinstance(v, Mapping) else {"values": v})} for k, v in raw.items()]
        if isinstance(raw, Mapping)
        else list(raw)
    )
    for item in items:
        if not isinstance(item, Mapping) or "axis" not in item:
            raise VlmadError(
                f"study spec {source}: ablation entry {item!r} needs an 'axis'", f"axes: {', '.join(AXES)}"
            )
        axis = str(item["axis"])
        if axis not in AXES:
            raise UnknownNameError(f"study spec {source}: unknown ablation axis {axis!r}", f"axes: {', '.join(AXES)}")
        extra = sorted(set(item) - {"axis", "values", "methods", "shots", "seeds", "datasets"})
        if extra:
            raise VlmadError(
                f"study spec {source}: ablation {axis}: unknown key {extra[0]!r}",
                "ablation keys: values, methods, shots, seeds, datasets",
            )
        values = item.get("values")
        if values is None:
            values = list(AXES[axis].default_values)
        if not isinstance(values, list) or not values:
            raise VlmadError(f"study spec {source}: ablation {axis}: values must be a non-empty list")
        ab_methods = _names(item.get("methods"), f"ablation {axis} methods")
        if ab_methods:
            bad = [m for m in ab_methods if m not in labels and m not in {x.method for x in methods}]
            if bad:
                raise VlmadError(
                    f"study spec {source}: ablation {axis}: method {bad[0]!r} is not in the study",
                    f"methods of the study: {', '.join(labels)}",
                )
        ab_ds = _names(item.get("datasets"), f"ablation {axis} datasets")
        if ab_ds:
            bad = [d for d in ab_ds if d not in kinds]
            if bad:
                raise VlmadError(f"study spec {source}: ablation {axis}: dataset {bad[0]!r} is not in the study")
        if any(a.axis == axis for a in ablations):
            raise VlmadError(
                f"study spec {source}: ablation axis {axis!r} listed twice", "list all its values in one entry"
            )
        AXES[axis].validate(values, base_dir)
        ablations.append(
            AblationSpec(
                axis,
                values,
                ab_methods,
                _int_list(item.get("shots", [0]), f"{axis} shots"),
                None if item.get("seeds") is None else _int_list(item["seeds"], f"{axis} seeds"),
                ab_ds,
            )
        )
    return ablations


def _parse_calibration(data: Mapping[str, Any], source: str) -> CalibrationSpec:
    cal_raw = dict(data.get("calibration") or {})
    extra = sorted(set(cal_raw) - {"mode", "quantile", "max_images", "shots", "seed"})
    if extra:
        raise VlmadError(
            f"study spec {source}: calibration: unknown key {extra[0]!r}",
            "calibration keys: mode, quantile, max_images, shots, seed",
        )
    cal = CalibrationSpec(**cal_raw)
    if cal.mode not in CALIBRATION_MODES:
        raise VlmadError(f"study spec {source}: calibration mode {cal.mode!r}", f"use {', '.join(CALIBRATION_MODES)}")
    if not 0.0 < float(cal.quantile) < 1.0:
        raise VlmadError(f"study spec {source}: calibration quantile must be in (0, 1), got {cal.quantile}")
    cal.quantile = float(cal.quantile)
    if cal.max_images is not None and int(cal.max_images) < 1:
        raise VlmadError(f"study spec {source}: calibration max_images must be >= 1 or null")
    if cal.shots is not None:
        cal.shots = _int_list(cal.shots, "calibration shots")
    return cal


def _parse_report(data: Mapping[str, Any], source: str) -> ReportSpec:
    rep_raw = dict(data.get("report") or {})
    extra = sorted(set(rep_raw) - {"gallery_shots", "gallery_seed", "gallery_per_kind", "gallery"})
    if extra:
        raise VlmadError(
            f"study spec {source}: report: unknown key {extra[0]!r}",
            "report keys: gallery, gallery_shots, gallery_seed, gallery_per_kind",
        )
    report = ReportSpec(**rep_raw)
    return report
