"""Reading and decoding test images ahead of the model, once per (method, category).

A thread pool (``num_workers`` threads; 0 = in the main thread) reads, decodes and preprocesses images and loads
masks at the evaluation resolution, a bounded number of images ahead of the consumer. PIL decoding and torch's
resize release the GIL, so threads overlap with inference without pickling anything. The first row of a
category streams through the pool and fills a cache of model inputs; the other rows of the category (other
shots and seeds) reuse the cache, so images are decoded once per category and method.

Time is accounted separately from inference: ``worker_s`` is the summed per-image loading work, ``wait_s`` the
time the consumer actually blocked waiting for data.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmad.data.sample import Sample
from vlmad_runtime.errors import DatasetLayoutError, ImageLoadError, VlmadError
from vlmad_runtime.images import load_image, load_mask

Preprocess = Callable[[Image.Image], Any]


def make_preprocess(detector: Any) -> Preprocess | None:
    """How to turn a decoded image into the detector's model input, off the main thread.

    A detector's own ``preprocess`` wins; otherwise a detector with a CLIP ``backbone`` gets exactly what its
    ``predict`` would do with a path (``to_model_input``). None: images are passed to ``predict`` as PIL images.
    """
    own = getattr(detector, "preprocess", None)
    if callable(own):
        return lambda img: own([img])[0]
    backbone = getattr(detector, "backbone", None)
    if backbone is not None and hasattr(backbone, "preprocess_tensor"):
        from vlmad.methods.inputs import to_model_input

        return lambda img: to_model_input([img], backbone)[0]
    return None


@dataclass
class Loaded:
    """One test image ready for the model: input (tensor or PIL), original (w, h), mask at eval size or None."""

    sample: Sample
    input: Any
    size: tuple[int, int]
    mask: np.ndarray | None


@dataclass
class LoadFailure:
    sample: Sample
    reason: str
    error: VlmadError


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to ``size=(w, h)`` (keeps it binary)."""
    w, h = size
    if (mask.shape[1], mask.shape[0]) == (w, h):
        return mask
    small = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(small) != 0


def load_one(
    sample: Sample, preprocess: Preprocess | None, eval_size: tuple[int, int] | None, want_mask: bool
) -> tuple[Loaded, float]:
    """Decode + preprocess one sample; ``eval_size=None`` keeps masks at the image's own size."""
    t0 = time.perf_counter()
    img = load_image(sample.image_path)
    model_input = preprocess(img) if preprocess is not None else img
    mask = None
    if want_mask and sample.mask_path is not None:
        full = load_mask(sample.mask_path)
        if (full.shape[1], full.shape[0]) != img.size:
            raise DatasetLayoutError(
                f"mask {sample.mask_path} is {full.shape[1]}x{full.shape[0]} but its image {sample.image_path} "
                f"is {img.size[0]}x{img.size[1]}",
                "masks must have exactly their image's size; re-export the mask or fix the pairing",
            )
        mask = resize_mask(full, eval_size) if eval_size is not None else full
    return Loaded(sample, model_input, img.size, mask), time.perf_counter() - t0


def _failure_reason(err: VlmadError) -> str:
    return err.reason if isinstance(err, ImageLoadError) else err.message


@dataclass
class LoadStats:
    worker_s: float = 0.0
    wait_s: float = 0.0
    images: int = 0


class TestSetCache:
    """The test images of one category for one detector; streamed on the first pass, cached afterwards."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        samples: Sequence[Sample],
        preprocess: Preprocess | None,
        eval_size: tuple[int, int] | None,
        want_masks: bool,
        num_workers: int = 0,
        prefetch: int = 16,
    ) -> None:
        self.samples = list(samples)
        self.preprocess = preprocess
        self.eval_size = eval_size
        self.want_masks = want_masks
        self.num_workers = max(0, int(num_workers))
        self.prefetch = max(1, int(prefetch))
        self.items: list[Loaded] = []
        self.failures: list[LoadFailure] = []
        self.complete = False
        self.stats = LoadStats()

    def _load(self, sample: Sample) -> tuple[Loaded | LoadFailure, float]:
        t0 = time.perf_counter()
        try:
            return load_one(sample, self.preprocess, self.eval_size, self.want_masks)
        except (ImageLoadError, DatasetLayoutError) as err:
            return LoadFailure(sample, _failure_reason(err), err), time.perf_counter() - t0

    def _stream(self) -> Iterator[Loaded | LoadFailure]:
        if self.num_workers == 0:
            for sample in self.samples:
                t0 = time.perf_counter()
                result, secs = self._load(sample)
                self.stats.worker_s += secs
                self.stats.wait_s += time.perf_counter() - t0
                yield result
            return
        pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="vlmad-load")
        pending: deque[Future] = deque()
        todo = iter(self.samples)
        try:
            for sample in todo:
                pending.append(pool.submit(self._load, sample))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                t0 = time.perf_counter()
                result, secs = pending.popleft().result()
                self.stats.wait_s += time.perf_counter() - t0
                self.stats.worker_s += secs
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, nxt))
                yield result
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def batches(
        self, batch_size: int, on_error: str = "skip", on_failure: Callable[[LoadFailure], None] | None = None
    ) -> Iterator[list[Loaded]]:
        """Batches of loaded images, in dataset order. ``on_error="stop"`` raises on the first unreadable file;
        "skip" records it in :attr:`failures` (the first pass only) and goes on."""
        if self.complete:
            for start in range(0, len(self.items), batch_size):
                yield self.items[start : start + batch_size]
            return
        self.items, self.failures, self.stats = [], [], LoadStats()
        batch: list[Loaded] = []
        for result in self._stream():
            if isinstance(result, LoadFailure):
                if on_error == "stop":
                    raise VlmadError(
                        f"{result.error.message} (--on-error stop)",
                        (result.error.hint + "; " if result.error.hint else "")
                        + "or rerun with --on-error skip to record the file in the results and go on",
                    ) from None
                self.failures.append(result)
                if on_failure is not None:
                    on_failure(result)
                continue
            self.items.append(result)
            self.stats.images += 1
            batch.append(result)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        self.complete = True


def stack_inputs(items: Sequence[Loaded]) -> Any:
    """A batch for ``predict``: one (B,3,S,S) tensor when inputs are tensors, else a list of PIL images."""
    if items and isinstance(items[0].input, torch.Tensor):
        return torch.stack([it.input for it in items])
    return [it.input for it in items]


def load_references(
    samples: Sequence[Sample], shots: int, preprocess: Preprocess | None, on_error: str
) -> tuple[list[Sample], Any, list[dict[str, str]], float]:
    """Take the first ``shots`` readable samples of the seeded order: (chosen, model inputs, skipped, seconds)."""
    t0 = time.perf_counter()
    chosen: list[Sample] = []
    inputs: list[Any] = []
    skipped: list[dict[str, str]] = []
    for sample in samples:
        if len(chosen) == shots:
            break
        try:
            img = load_image(sample.image_path)
        except ImageLoadError as err:
            if on_error == "stop":
                raise VlmadError(
                    f"{err.message} (reference image; --on-error stop)",
                    "replace the file or rerun with --on-error skip (the next image of the seeded draw is then used)",
                ) from None
            skipped.append({"path": str(sample.image_path), "reason": err.reason})
            continue
        chosen.append(sample)
        inputs.append(preprocess(img) if preprocess is not None else img)
    if len(chosen) < shots:
        raise VlmadError(
            f"only {len(chosen)} readable train images for {shots}-shot",
            "lower --shots or fix the unreadable train images",
        )
    batch = torch.stack(inputs) if inputs and isinstance(inputs[0], torch.Tensor) else inputs
    return chosen, batch, skipped, time.perf_counter() - t0
