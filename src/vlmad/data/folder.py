"""Generic folder dataset: the simplest layout a user can drop their own product images into.

One category::

    <root>/normal/*        (or good/)      normal test images
    <root>/anomalous/*     (or bad/)       defective test images
    <root>/masks/*         optional        <stem>.png or <stem>_mask.png per anomalous image
    <root>/train/normal/*  optional        (or train/good/) normal references for few-shot methods

The category name is the root folder's name unless ``category=`` is given. Several products can sit side by
side as ``<root>/<product>/normal/...``; each sub-folder is then a category.

Without ``masks/`` there is no pixel ground truth: :meth:`FolderDataset.has_masks` is False and callers must
skip pixel metrics (an anomalous image without a mask is *not* the same as a defect-free mask). Without
``train/normal`` no few-shot references exist: ``samples(category, "train")`` raises a
:class:`DatasetLayoutError` and the harness must run zero-shot only (references are never taken from the test
images, which would leak them into the evaluation).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vlmad.data.base import BaseDataset, Split, list_images, list_subdirs, match_masks
from vlmad.data.sample import Sample
from vlmad_runtime.errors import DatasetLayoutError

NORMAL_DIRS: tuple[str, ...] = ("normal", "good")
ANOMALOUS_DIRS: tuple[str, ...] = ("anomalous", "bad")
MASK_DIR = "masks"
MASK_SUFFIXES: tuple[str, ...] = ("", "_mask")

LAYOUT_HINT = (
    "expected folder layout <root>/normal/ (or good/), <root>/anomalous/ (or bad/), optional <root>/masks/ "
    "(<stem>.png or <stem>_mask.png) and optional <root>/train/normal/ for few-shot references"
)


def _is_category_dir(path: Path) -> bool:
    return any((path / name).is_dir() for name in NORMAL_DIRS + ANOMALOUS_DIRS)


def _one_of(parent: Path, names: tuple[str, ...]) -> Path | None:
    """The single existing folder among synonymous ``names`` (both present would be ambiguous)."""
    present = [parent / n for n in names if (parent / n).is_dir()]
    if len(present) > 1:
        raise DatasetLayoutError(
            f"both {present[0]} and {present[1]} exist",
            "merge them into one folder: they mean the same thing",
        )
    return present[0] if present else None


def _images_flat(directory: Path | None) -> list[Path]:
    """Images directly in ``directory``; nested folders are refused rather than silently skipped."""
    if directory is None:
        return []
    for sub in list_subdirs(directory):
        if list_images(sub):
            raise DatasetLayoutError(
                f"{sub} holds images in a sub-folder of {directory}",
                "folder datasets take images directly in normal/ and anomalous/; move them up, or use the "
                "MVTec layout (kind='mvtec') for per-defect-type folders",
            )
    return list_images(directory)


class FolderDataset(BaseDataset):
    """A user's own images in ``normal/`` + ``anomalous/`` folders (see module docstring)."""

    name = "folder"
    layout_hint = LAYOUT_HINT

    def __init__(
        self, root: str | Path, categories: str | Iterable[str] | None = None, category: str | None = None
    ) -> None:
        self._category_name = category
        self._dirs: dict[str, Path] = {}
        super().__init__(root, categories)

    def _available_categories(self) -> list[str]:
        if _is_category_dir(self.root):
            name = self._category_name or self.root.resolve().name
            self._dirs = {name: self.root}
        else:
            self._dirs = {d.name: d for d in list_subdirs(self.root) if _is_category_dir(d)}
            if self._category_name is not None:
                raise DatasetLayoutError(
                    f"category= renames a single-category folder, but {self.root} has no normal/ or anomalous/",
                    "drop category= and select sub-folders with categories=, or point root at one product folder",
                )
        return sorted(self._dirs)

    def category_dir(self, category: str) -> Path:
        self._check_category(category)
        return self._dirs[category]

    def has_masks(self, category: str | None = None) -> bool:
        """True when the category has a ``masks/`` folder; with one category, ``category`` may be omitted."""
        if category is None:
            if len(self._categories) != 1:
                raise DatasetLayoutError(
                    f"folder dataset {self.root} has several categories", "pass the category to has_masks()"
                )
            category = self._categories[0]
        return (self.category_dir(category) / MASK_DIR).is_dir()

    def _split_location(self, category: str, split: Split) -> Path:
        folder = self.category_dir(category)
        return folder / "train" / "normal" if split == "train" else folder

    def _scan(self, category: str, split: Split) -> list[Sample]:
        folder = self.category_dir(category)
        if split == "train":
            train = folder / "train"
            ref_dir = _one_of(train, NORMAL_DIRS) if train.is_dir() else None
            if ref_dir is None:
                raise DatasetLayoutError(
                    f"no few-shot references: {train / 'normal'} does not exist",
                    "put a few normal images there for few-shot methods; zero-shot methods need no train split",
                )
            return [Sample(p, "normal", category, "train", "good") for p in _images_flat(ref_dir)]

        normal = _images_flat(_one_of(folder, NORMAL_DIRS))
        anomalous = _images_flat(_one_of(folder, ANOMALOUS_DIRS))
        samples = [Sample(p, "normal", category, "test", "good") for p in normal]
        mask_dir = folder / MASK_DIR
        if mask_dir.is_dir():
            pairs = match_masks(
                anomalous,
                mask_dir,
                MASK_SUFFIXES,
                extra_stems=[p.stem for p in normal],
                layout=f"or delete {mask_dir} to run without pixel metrics; {LAYOUT_HINT}",
            )
            samples += [Sample(p, "anomalous", category, "test", "bad", pairs[p]) for p in anomalous]
        else:
            samples += [Sample(p, "anomalous", category, "test", "bad") for p in anomalous]
        return samples
