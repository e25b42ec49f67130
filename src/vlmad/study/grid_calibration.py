"""Calibration of a study's main grid (``calibration.mode`` of the spec): per main-grid configuration (method
label, shots) and category one ``deploy/<dataset>/<category>/<label>-<K>shot.json``. ``normal-quantile`` scores
held-out normal train images (a seeded draw of at most ``max_images``, the row's few-shot references excluded)
with the row's detector and references, keeping the scores in ``calibration/<row_key>-<draw>.csv`` (reused on
re-runs); ``f1-optimal-test`` fits the threshold on the row's own test scores (optimistic)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmad.bench.protocol import hash_key, relpath
from vlmad.bench.results import RESULTS_FILE, load_results, read_scores
from vlmad.study.calibration import (
    deploy_record,
    f1_optimal_threshold,
    normal_quantile_threshold,
    rates_at,
    score_images,
    write_deploy,
)
from vlmad.study.factory import StudyDetectorFactory
from vlmad.study.plan import StudyOptions, StudyPlan
from vlmad_runtime.errors import VlmadError

CALIBRATION_DIR = "calibration"
DEPLOY_DIR = "deploy"
Log = Callable[[str], None]
#: label -> the (row, held-out images, calibration CSV) still to score
Pending = dict[str, list[tuple[Mapping[str, Any], list[Path], Path]]]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _main_rows(rows: Sequence[Mapping[str, Any]], labels: set[str]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("status") == "ok" and not (r.get("tags") or {}) and r["method_label"] in labels]


def _seed_order(seed: Any) -> tuple[int, int]:
    return (0, -1) if seed is None else (1, int(seed))


def deploy_path(out: Path, ds_name: str, category: str, label: str, shots: int) -> Path:
    return out / DEPLOY_DIR / _slug(ds_name) / _slug(category) / f"{_slug(label)}-{int(shots)}shot.json"


def calibration_targets(
    rows: Sequence[Mapping[str, Any]], labels: set[str], shots: Sequence[int] | None
) -> list[Mapping[str, Any]]:
    """One row per (label, dataset, category, shots) of the main grid: the one with the smallest seed."""
    best: dict[tuple, Mapping[str, Any]] = {}
    for r in _main_rows(rows, labels):
        if shots is not None and int(r["shots"]) not in shots:
            continue
        key = (
            r["method_label"],
            r["dataset"]["kind"],
            r["dataset"]["root"],
            r["dataset"]["category"],
            r["shots"],
            r.get("protocol", {}).get("limit"),
        )
        if key not in best or _seed_order(r["seed"]) < _seed_order(best[key]["seed"]):
            best[key] = r
    return list(best.values())


def _calibration_images(reader: Any, row: Mapping[str, Any], max_images: int | None, seed: int) -> list[Path]:
    """Held-out normals: the train split's normal images minus the row's references (and any test image)."""
    root = Path(row["dataset"]["root"])
    try:
        train = reader.samples(row["dataset"]["category"], "train")
    except VlmadError:
        return []
    refs = set(row.get("references") or [])
    test = {s.image_path.resolve() for s in reader.samples(row["dataset"]["category"], "test")}
    pool = [
        s.image_path
        for s in train
        if not s.is_anomalous and relpath(s.image_path, root) not in refs and s.image_path.resolve() not in test
    ]
    order = np.random.default_rng(int(seed)).permutation(len(pool))
    chosen = [pool[int(i)] for i in order]
    return chosen[:max_images] if max_images else chosen


def _draws(out: Path, targets: Sequence[Mapping[str, Any]], cal: Any) -> tuple[Pending, dict[str, Path]]:
    """Per target row its held-out normals and the calibration CSV of that draw (row key -> CSV: never another
    draw's, by mtime); the ones whose CSV does not exist yet are pending, by method label."""
    from vlmad.data import load_dataset

    readers: dict[tuple[str, str], Any] = {}
    pending: Pending = {}
    draws: dict[str, Path] = {}
    for row in targets:
        if cal.mode == "f1-optimal-test":
            continue
        ds = row["dataset"]
        ident = (ds["kind"], ds["root"])
        if ident not in readers:
            readers[ident] = load_dataset(ds["kind"], ds["root"])
        images = _calibration_images(readers[ident], row, cal.max_images, cal.seed)
        if not images:
            continue
        draw = hash_key({"images": [relpath(p, Path(ds["root"])) for p in images]}, 8)
        csv_path = out / CALIBRATION_DIR / f"{row['row_key']}-{draw}.csv"
        draws[row["row_key"]] = csv_path
        if not csv_path.exists():
            pending.setdefault(row["method_label"], []).append((row, images, csv_path))
    return pending, draws


def _score_pending(
    pending: Pending, specs: Mapping[str, Mapping[str, Any]], factory: StudyDetectorFactory, options: StudyOptions
) -> None:
    """Score the pending draws, one detector per method label (set up per category, its references fitted)."""
    from vlmad.bench.results import write_scores

    for label, items in pending.items():
        spec = specs[label]
        runtime = {
            **spec,
            "kwargs": {
                **spec["kwargs"],
                "device": options.device,
                "batch_size": options.batch_size,
                **({} if options.use_cache else {"use_cache": False}),
            },
        }
        detector = factory(runtime)
        current = None
        for row, images, csv_path in sorted(
            items, key=lambda t: (t[0]["dataset"]["root"], t[0]["dataset"]["category"], t[0]["shots"])
        ):
            ds = row["dataset"]
            root = Path(ds["root"])
            if current != (ds["root"], ds["category"]):
                detector.setup(ds["category"])
                current = (ds["root"], ds["category"])
            detector.reset_references()
            if row["shots"]:
                detector.fit([root / p for p in row["references"]])
            scores, errors = score_images(detector, images, options.batch_size)
            write_scores(
                csv_path,
                [
                    {"path": relpath(p, root), "label": "normal", "defect_type": "good", "score": s, "error": e}
                    for p, s, e in zip(images, scores, errors, strict=True)
                ],
            )
        del detector


def calibrate_study(
    out: Path, plan: StudyPlan, factory: StudyDetectorFactory, options: StudyOptions, say: Log
) -> list[Path]:
    """Deploy files for the main grid (see module docstring); returns the deploy.json paths."""
    from vlmad.bench.tables import dataset_names

    cal = plan.spec.calibration
    if cal.mode == "none" or not (out / RESULTS_FILE).exists():
        return []
    rows = load_results(out)
    targets = calibration_targets(rows, {m["label"] for m in plan.methods}, cal.shots)
    names = dataset_names([r for r in rows if r.get("status") == "ok"])
    specs = {m["label"]: m for m in plan.methods}
    pending, draws = _draws(out, targets, cal)
    if pending:
        say(f"calibration: scoring held-out normal images for {sum(len(v) for v in pending.values())} configuration(s)")
    _score_pending(pending, specs, factory, options)
    written: list[Path] = []
    for row in targets:
        try:
            path = _deploy_for_row(out, row, names, cal, specs, draws.get(row["row_key"]))
        except VlmadError as err:  # e.g. no anomalous test image for F1, no readable held-out normal
            say(
                f"[yellow]no deploy file[/] for {row['method_label']} {row['shots']}-shot "
                f"{row['dataset']['kind']}/{row['dataset']['category']}: {err.message}"
            )
            continue
        if path is not None:
            written.append(path)
    return written


def _deploy_for_row(
    out: Path,
    row: Mapping[str, Any],
    names: Mapping[tuple[str, str], str],
    cal: Any,
    specs: Mapping[str, Mapping[str, Any]],
    draw_csv: Path | None,
) -> Path | None:
    """The row's deploy file from ``draw_csv``: exactly the calibration CSV of the current draw (None: no
    held-out normal image for this row)."""
    from vlmad.fingerprint import detector_fingerprint, references_fingerprint

    ds = row["dataset"]
    test = read_scores(out / row["scores_file"])
    test_scores = [t["score"] for t in test if t["score"] is not None]
    test_labels = [t["label"] == "anomalous" for t in test if t["score"] is not None]
    extra: dict[str, Any] = {
        "row_key": row["row_key"],
        "method_label": row["method_label"],
        "dataset": ds["kind"],
        "root": ds["root"],
        "category": ds["category"],
        "shots": row["shots"],
        "seed": row["seed"],
        "references": list(row.get("references") or []),
        "detector_options": {
            k: v
            for k, v in specs[row["method_label"]]["kwargs"].items()
            if k not in ("device", "batch_size", "use_cache")
        },
    }
    if cal.mode == "f1-optimal-test":
        calib = f1_optimal_threshold(test_scores, test_labels)
        extra.update(
            source="test split scores of the row (threshold fitted on the evaluation images: optimistic)",
            scores_file=row["scores_file"],
        )
    else:
        if draw_csv is None or not draw_csv.is_file():
            return None
        normal = read_scores(draw_csv)
        calib = normal_quantile_threshold([r["score"] for r in normal], cal.quantile)
        extra.update(
            source="held-out normal train images (few-shot references excluded)",
            scores_file=draw_csv.relative_to(out).as_posix(),
            selection_seed=cal.seed,
            max_images=cal.max_images,
        )
    test_rates = rates_at(calib.threshold, test_scores, test_labels)
    extra.update(
        test_false_alarm_rate=test_rates["false_alarm_rate"],
        test_recall=test_rates["recall"],
        test_precision=test_rates["precision"],
        test_n_normal=test_rates["n_normal"],
        test_n_anomalous=test_rates["n_anomalous"],
    )
    refs = [Path(ds["root"]) / p for p in row.get("references") or []]
    fingerprint = detector_fingerprint(row.get("detector") or {}, ds["category"], references_fingerprint(refs))
    record = deploy_record(
        calib, row["method"], ds["category"], row.get("detector") or {}, extra, fingerprint=fingerprint
    )
    if row.get("random_weights"):
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        record["calibration"]["warning"] = RANDOM_WEIGHTS_STAMP
    path = deploy_path(
        out, names.get((ds["kind"], ds["root"]), ds["kind"]), ds["category"], row["method_label"], row["shots"]
    )
    write_deploy(path, record)
    return path
