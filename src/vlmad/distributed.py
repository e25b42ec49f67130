"""`vlmad detect --executor ray`: batch inspection of large image sets through a Ray Data pipeline.

Pipeline: the driver streams the inputs (files, folders, globs, ``.txt`` list files with one path per line)
into shard files of ``SHARD_LINES`` lines under ``OUT/.ray-inputs/`` -> ``read_text`` (one block per shard, read
lazily, so millions of lines never sit in memory at once) -> ``decode`` (CPU tasks: file -> RGB array, or the load
error) -> ``_Predictor`` on an actor pool of ``workers`` actors (each holds one detector: set up for the class,
fitted on the references; ``gpus_per_worker`` GPUs each) which scores a batch and writes its maps/overlays ->
the driver, which writes ``scores.csv`` in input order (a reorder buffer keyed by input index) with the columns,
names and values of local detect (:func:`vlmad.jobs.run_detection`).

Resume: ``scores.csv`` is flushed per batch; a rerun keeps its complete rows, checks they are the first inputs in
order (else it refuses: another input list) and computes only the rest. Maps and overlays are written by the
workers under ``OUT`` (on a cluster, OUT must be shared storage, like the datasets).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vlmad_runtime.errors import VlmadError
from vlmad_runtime.jobs import NON_FINITE

SHARD_LINES = 10_000


# ---------------------------------------------------------------------------------------------------------------
# inputs


def iter_inputs(inputs: Sequence[str | Path], recursive: bool = False) -> Iterator[Path]:
    """Every input image in order, by the rules of local detect (:func:`vlmad.cli.inputs.collect_images`: files,
    folders, glob patterns, ``.txt``/``.lst``/``.list`` files of one path per line), except that a list file is
    streamed line by line and a listed file that does not exist becomes an error row instead of stopping the run
    (an archive of millions of images is not checked up front)."""
    from vlmad.cli.inputs import GLOB_CHARS, LIST_SUFFIXES, _folder, _pattern, read_list_file

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            yield from _folder(path, recursive)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for listed in read_list_file(path):
                if listed.is_dir() or (GLOB_CHARS & set(str(listed)) and not listed.exists()):
                    yield from iter_inputs([listed], recursive)
                else:
                    yield listed
        elif path.exists():
            yield path
        elif GLOB_CHARS & set(str(item)):
            yield from _pattern(str(path))
        else:
            raise VlmadError(
                f"input {path} does not exist", "pass image files, folders, glob patterns or a .txt list of paths"
            )


def stem_namer(inputs: Sequence[str | Path], recursive: bool = False) -> tuple[int, Any]:
    """Count the inputs (one streaming pass) and return (count, name(path) -> output stem) following
    :func:`vlmad.jobs.unique_stems` (``<parent>_<stem>`` where stems repeat, then ``-n``), in input order."""
    counts: dict[str, int] = {}
    n = 0
    for p in iter_inputs(inputs, recursive):
        counts[p.stem] = counts.get(p.stem, 0) + 1
        n += 1
    used: set[str] = set()

    def name(p: Path) -> str:
        out = p.stem if counts[p.stem] == 1 else f"{p.parent.name}_{p.stem}"
        base, k = out, 1
        while out in used:
            out, k = f"{base}-{k}", k + 1
        used.add(out)
        return out

    return n, name


# ---------------------------------------------------------------------------------------------------------------
# resume


def completed_prefix(csv_path: Path) -> list[str]:
    """Paths of the complete rows of an earlier run's scores.csv (a torn last line from a crash is cut off)."""
    if not csv_path.exists():
        return []
    data = csv_path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        csv_path.write_bytes(data)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return [row["path"] for row in csv.DictReader(fh)]


def _write_shards(folder: Path, inputs: Sequence[str | Path], skip: list[str], namer: Any, recursive: bool) -> int:
    """Pending inputs as ``index<TAB>name<TAB>path`` lines in shard files; returns how many are pending."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pending, fh = 0, None
    for i, p in enumerate(iter_inputs(inputs, recursive)):
        name = namer(p)
        if i < len(skip):
            if skip[i] != str(p):
                raise VlmadError(
                    f"{folder.parent / 'scores.csv'} row {i + 1} is {skip[i]!r}, input {i + 1} is {p}",
                    "an earlier run with other inputs wrote this folder: pass another --out",
                )
            continue
        if pending % SHARD_LINES == 0:
            if fh is not None:
                fh.close()
            fh = open(folder / f"{pending // SHARD_LINES:08d}.txt", "w", encoding="utf-8")
        if "\t" in str(p) or "\n" in str(p):
            raise VlmadError(f"input path {str(p)!r} contains a tab or newline", "rename the file")
        fh.write(f"{i}\t{name}\t{p}\n")
        pending += 1
    if fh is not None:
        fh.close()
    return pending


# ---------------------------------------------------------------------------------------------------------------
# pipeline stages (run on Ray workers)


def decode(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """``index<TAB>name<TAB>path`` lines -> RGB arrays (an empty array and the reason for a bad file)."""
    from vlmad.data.base import is_image_file
    from vlmad_runtime.errors import ImageLoadError
    from vlmad_runtime.images import load_image

    idx, names, paths, images, errors = [], [], [], [], []
    for line in batch["text"]:
        i, name, path = str(line).split("\t", 2)
        idx.append(int(i))
        names.append(name)
        paths.append(path)
        try:
            if not Path(path).exists():
                raise ImageLoadError(path, "file not found")
            if not is_image_file(Path(path)):
                raise ImageLoadError(path, "not an image file (by extension)")
            images.append(np.asarray(load_image(Path(path)), dtype=np.uint8))
            errors.append("")
        except ImageLoadError as err:
            images.append(np.zeros((0, 0, 3), np.uint8))
            errors.append(err.reason)
    return {
        "idx": np.array(idx, np.int64),
        "name": np.array(names, object),
        "path": np.array(paths, object),
        "image": _ragged(images),
        "error": np.array(errors, object),
    }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class _Predictor:
    """An actor of the pool: one detector, ready for the class (and its references); writes maps/overlays."""

    def __init__(
        self,
        build: Any,
        class_name: str,
        references: list[str],
        out: str,
        save_maps: bool,
        overlay: bool,
        deployment: Any,
    ) -> None:
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        self.detector = build()
        self.detector.setup(class_name)
        if references:
            self.detector.fit([Path(r) for r in references])
        self.out = Path(out)
        self.save_maps, self.overlay, self.deployment = save_maps, overlay, deployment
        self.info = json.dumps(self.detector.info().as_dict(), default=str)
        self.note = RANDOM_WEIGHTS_STAMP if self.detector.info().random_weights else ""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        n = len(batch["idx"])
        cols: dict[str, list[Any]] = {k: [""] * n for k in ("decision", "map_file", "overlay_file")}
        cols["score"] = [np.nan] * n
        cols["width"] = [-1] * n
        cols["height"] = [-1] * n
        errors = [str(e) for e in batch["error"]]
        ok = [i for i in range(n) if not errors[i]]
        if ok:
            images = [Image.fromarray(np.asarray(batch["image"][i], dtype=np.uint8)) for i in ok]
            scores, maps = self.detector.predict(images).numpy()
            for j, i in enumerate(ok):
                img, name = images[j], str(batch["name"][i])
                cols["width"][i], cols["height"][i] = img.size
                if not np.isfinite(scores[j]) or not np.isfinite(maps[j]).all():
                    errors[i] = NON_FINITE  # as local detect: no score, no decision, never "normal"
                    continue
                cols["score"][i] = float(scores[j])
                if self.deployment is not None:
                    cols["decision"][i] = self.deployment.decide(float(scores[j]))
                if self.save_maps:
                    np.save(self.out / "maps" / f"{name}.npy", maps[j].astype(np.float32))
                    cols["map_file"][i] = f"maps/{name}.npy"
                if self.overlay:
                    self._draw(img, maps[j], float(scores[j]), cols["decision"][i], name)
                    cols["overlay_file"][i] = f"overlays/{name}.png"
        return {
            "idx": batch["idx"],
            "path": batch["path"],
            "error": np.array(errors, object),
            "score": np.array(cols["score"], np.float64),
            "width": np.array(cols["width"], np.int64),
            "height": np.array(cols["height"], np.int64),
            **{k: np.array(cols[k], object) for k in ("decision", "map_file", "overlay_file")},
            "note": np.array([self.note] * n, object),
            "info": np.array([self.info] * n, object),
        }

    def _draw(self, img: Any, amap: np.ndarray, score: float, decision: str, name: str) -> None:
        """The QC panel of local detect on the deploy file's calibrated map scale (never a per-image scale:
        the CLI refuses --overlay on Ray without a calibrated scale)."""
        from vlmad_runtime.drawing import MapScale, QcItem, qc_panel

        dep = self.deployment
        scale = MapScale(*dep.pixel.map_scale, source=f"calibrated ({dep.where})")
        item = QcItem(img, amap, score, decision, dep.threshold, dep.pixel.pixel_threshold, None, self.note)
        qc_panel(item, scale).save(self.out / "overlays" / f"{name}.png")


# ---------------------------------------------------------------------------------------------------------------
# the driver


def detect_on_ray(
    build: Any,
    inputs: Sequence[str | Path],
    class_name: str,
    out: Path,
    references: Sequence[Path] = (),
    save_maps: bool = False,
    overlay: bool = False,
    batch_size: int = 8,
    deployment: Any = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    ray_address: str | None = None,
    on_error: str = "skip",
    progress: Any = None,
    recursive: bool = False,
) -> dict[str, int]:
    """Score every input on Ray (see module docstring); ``build()`` makes the detector on each actor.
    ``deployment``: a checked deploy file (decisions; overlays need its calibrated map scale).
    Returns counts: total, skipped (already in scores.csv), scored, errors and non_finite (this run)."""
    from vlmad.bench.executors import RayConnection
    from vlmad.jobs import CSV_FIELDS

    if on_error not in ("skip", "stop"):
        raise VlmadError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if workers < 1 or batch_size < 1:
        raise VlmadError("--workers and --batch-size must be >= 1")
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    total, namer = stem_namer(inputs, recursive)
    csv_path = out / "scores.csv"
    done = completed_prefix(csv_path)
    pending = _write_shards(out / ".ray-inputs", inputs, done, namer, recursive)
    if overlay and (deployment is None or deployment.pixel is None):
        raise VlmadError(
            "--overlay with --executor ray needs a deploy file with a calibrated map scale (heatmaps are "
            "never scaled per image)",
            "pass --deploy (from `vlmad calibrate`), or use --executor local for one scale over the whole run",
        )
    counts = {"total": total, "skipped": len(done), "scored": 0, "errors": 0, "non_finite": 0}
    for sub, wanted in (("maps", save_maps), ("overlays", overlay)):
        if wanted:
            (out / sub).mkdir(exist_ok=True)
    if progress is not None and done:
        progress(len(done))
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        with open(csv_path, "w", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=CSV_FIELDS).writeheader()
    if pending:  # nothing left: no Ray instance is started
        with RayConnection(ray_address) as ray, open(csv_path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            ds = _pipeline(
                ray,
                out,
                build,
                class_name,
                references,
                save_maps,
                overlay,
                batch_size,
                deployment,
                workers,
                gpus_per_worker,
                cpus_per_worker,
            )
            _drain(ds, writer, fh, len(done), counts, on_error, progress, out, deployment, total)
    shutil.rmtree(out / ".ray-inputs", ignore_errors=True)
    return counts


def _pipeline(
    ray: Any,
    out: Path,
    build: Any,
    class_name: str,
    references: Sequence[Path],
    save_maps: bool,
    overlay: bool,
    batch_size: int,
    deployment: Any,
    workers: int,
    gpus: float,
    cpus: float,
) -> Any:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = ray.data.read_text(str(out / ".ray-inputs"), file_extensions=["txt"])
    ds = ds.map_batches(decode, batch_size=batch_size, batch_format="numpy")
    kwargs = {
        "build": build,
        "class_name": class_name,
        "references": [str(r) for r in references],
        "out": str(out),
        "save_maps": save_maps,
        "overlay": overlay,
        "deployment": deployment,
    }
    return ds.map_batches(
        _Predictor,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus,
        num_cpus=cpus,
    )


def _drain(
    ds: Any,
    writer: csv.DictWriter,
    fh: Any,
    start: int,
    counts: dict[str, int],
    on_error: str,
    progress: Any,
    out: Path,
    deployment: Any,
    total: int,
) -> None:
    """Rows back from the actors -> scores.csv in input order (flushed per batch); run.json once known."""
    waiting: dict[int, dict[str, Any]] = {}
    nxt = start
    info_written = False
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if not info_written:
            info = json.loads(str(batch["info"][0]))
            note = str(batch["note"][0])
            (out / "run.json").write_text(
                json.dumps(
                    {
                        "detector": info,
                        "n_images": total,
                        "threshold": None if deployment is None else deployment.threshold,
                        "warning": note or None,
                        "executor": "ray",
                    },
                    indent=2,
                )
            )
            if note and (out / "maps").is_dir():
                (out / "maps" / "RANDOM_WEIGHTS.txt").write_text(note + "\n")
            info_written = True
        for i in range(len(batch["idx"])):
            row = _csv_row(batch, i)
            if row["error"] and on_error == "stop":
                raise VlmadError(f"cannot read {row['path']}: {row['error']}", "fix the file or use --on-error skip")
            waiting[int(batch["idx"][i])] = row
        n0 = nxt
        while nxt in waiting:
            row = waiting.pop(nxt)
            counts["errors" if row["error"] else "scored"] += 1
            counts["non_finite"] += row["error"] == NON_FINITE
            writer.writerow(row)
            nxt += 1
        fh.flush()
        if progress is not None and nxt > n0:
            progress(nxt - n0)
    if waiting:
        raise VlmadError(f"{len(waiting)} result(s) came back without their predecessors", "rerun to resume")


def _csv_row(batch: dict[str, Any], i: int) -> dict[str, Any]:
    """One scores.csv row with the values local detect writes (empty cells where it leaves them empty)."""
    err = str(batch["error"][i])
    score = float(batch["score"][i])
    return {
        "path": str(batch["path"][i]),
        "score": "" if err else score,
        "decision": str(batch["decision"][i]),
        "width": "" if err else int(batch["width"][i]),
        "height": "" if err else int(batch["height"][i]),
        "map_file": str(batch["map_file"][i]),
        "overlay_file": str(batch["overlay_file"][i]),
        "error": err,
        "note": str(batch["note"][i]),
    }


def detector_builder(**kwargs: Any) -> Any:
    """A picklable zero-argument detector factory from `vlmad detect` options (see cli.common.build_detector)."""
    from vlmad.cli.common import build_detector

    return partial(build_detector, **kwargs)
