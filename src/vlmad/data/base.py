"""What every dataset reader shares: the reader protocol and the listing/validation helpers.

The readers (MVTec AD, VisA, user folders) differ only in *where* they find images and masks; listing files,
choosing categories, validating split names and pairing images with masks happen here once, so that every
reader fails the same way (a :class:`DatasetLayoutError` naming the offending path and how to fix it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from vlmad.data.sample import Sample
from vlmad_runtime.errors import DatasetLayoutError, UnknownNameError
from vlmad_runtime.listing import IMAGE_EXTENSIONS, is_image_file, list_images  # noqa: F401 (re-exported)

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")


@runtime_checkable
class DatasetReader(Protocol):
    """The surface the evaluation harness relies on; every reader implements it."""

    name: str

    @property
    def categories(self) -> list[str]: ...

    def samples(self, category: str, split: Split) -> list[Sample]: ...

    def has_masks(self, category: str | None = None) -> bool: ...


def list_subdirs(directory: Path) -> list[Path]:
    """Visible sub-directories, sorted by name (``.ipynb_checkpoints`` and friends are ignored)."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def parse_names(names: str | Iterable[str] | None) -> list[str] | None:
    """Accept ``None``, ``"a,b"`` or an iterable of names; strip blanks and drop duplicates, keeping order."""
    if names is None:
        return None
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in items:
        item = str(item).strip()
        if item and item not in out:
            out.append(item)
    return out


def select_categories(available: Sequence[str], requested: str | Iterable[str] | None, where: Path) -> list[str]:
    """The chosen subset (in the order given) or all available categories (sorted).

    An unknown name is a user typo, not a layout problem, hence :class:`UnknownNameError` listing the choices.
    """
    chosen = parse_names(requested)
    if chosen is None:
        return sorted(available)
    if not chosen:
        raise UnknownNameError(
            f"no category selected for dataset at {where}",
            f"pass one or more of: {', '.join(sorted(available))} (or None for all)",
        )
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise UnknownNameError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} "
            f"in dataset at {where}",
            f"available categories: {', '.join(sorted(available)) or '(none)'}",
        )
    return chosen


def check_split(split: str) -> Split:
    """Reject anything but "train"/"test" early: a typo would otherwise look like an empty dataset."""
    if split not in SPLITS:
        raise UnknownNameError(f"unknown split {split!r}", "use 'train' (normal references) or 'test'")
    return split  # type: ignore[return-value]


def require_dir(path: Path, what: str, hint: str) -> Path:
    """Raise a :class:`DatasetLayoutError` naming ``path`` unless it is a directory."""
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise DatasetLayoutError(f"{what} {path} {state}", hint)
    return path


def match_masks(
    images: Sequence[Path],
    mask_dir: Path,
    suffixes: Sequence[str],
    *,
    extra_stems: Iterable[str] = (),
    layout: str,
) -> dict[Path, Path]:
    """Pair every image with ``<mask_dir>/<stem><suffix>.<ext>`` for one of ``suffixes``.

    Both directions are checked because either one means the ground truth does not describe the images:
    an image without a mask would be scored as defect-free at pixel level, a mask without an image usually
    means a renamed or missing file. Masks whose stem is in ``extra_stems`` (e.g. all-black masks some users
    export for normal images) are tolerated and ignored.
    """
    masks = list_images(mask_dir)
    by_stem: dict[str, list[Path]] = {}
    for mask in masks:
        by_stem.setdefault(mask.stem, []).append(mask)

    pairs: dict[Path, Path] = {}
    used: set[Path] = set()
    for image in images:
        candidates = [m for suffix in suffixes for m in by_stem.get(image.stem + suffix, [])]
        if not candidates:
            expected = " or ".join(f"{mask_dir / (image.stem + s)}.png" for s in suffixes)
            raise DatasetLayoutError(
                f"anomalous image {image} has no mask (expected {expected})",
                f"add the mask, or remove the image; {layout}",
            )
        if len(candidates) > 1:
            raise DatasetLayoutError(
                f"anomalous image {image} matches several masks: {', '.join(str(c) for c in candidates)}",
                "keep exactly one mask file per image",
            )
        pairs[image] = candidates[0]
        used.add(candidates[0])

    tolerated = {s + suffix for s in extra_stems for suffix in suffixes}
    orphans = [m for m in masks if m not in used and m.stem not in tolerated]
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DatasetLayoutError(
            f"mask {orphans[0]} has no matching image{more}",
            f"rename it to match its image or delete it; {layout}",
        )
    return pairs


def sort_samples(samples: Iterable[Sample]) -> list[Sample]:
    """Normal first, then by defect type and file name: the same order on every file system."""
    return sorted(samples, key=lambda s: (s.is_anomalous, s.defect_type, s.image_path.name, str(s.image_path)))


class BaseDataset:
    """Common state of the readers: root validation, category selection and a per-(category, split) cache.

    Subclasses set ``name``, implement :meth:`_available_categories` (cheap discovery) and :meth:`_scan`
    (list one split, raising :class:`DatasetLayoutError` on any inconsistency).
    """

    name: str = "dataset"
    #: one-line description of the expected layout, appended to layout-error hints
    layout_hint: str = ""

    def __init__(self, root: str | Path, categories: str | Iterable[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        require_dir(self.root, f"{self.name} root", f"point it at the dataset folder; {self.layout_hint}")
        available = self._available_categories()
        if not available:
            raise DatasetLayoutError(f"no {self.name} categories found under {self.root}", self.layout_hint)
        self._categories = select_categories(available, categories, self.root)
        self._cache: dict[tuple[str, str], list[Sample]] = {}

    @property
    def categories(self) -> list[str]:
        return list(self._categories)

    def samples(self, category: str, split: Split) -> list[Sample]:
        """All samples of one split of one category, deterministically sorted (scanned once, then cached)."""
        self._check_category(category)
        check_split(split)
        key = (category, split)
        if key not in self._cache:
            found = sort_samples(self._scan(category, split))
            if not found:
                where = self._split_location(category, split)
                raise DatasetLayoutError(
                    f"{self.name} category {category!r} has no {split} images in {where}",
                    f"add images for the {split} split; {self.layout_hint}",
                )
            self._cache[key] = found
        return list(self._cache[key])

    def has_masks(self, category: str | None = None) -> bool:
        """Whether anomalous test images carry pixel masks; when False callers must skip pixel metrics."""
        return True

    def _check_category(self, category: str) -> None:
        if category not in self._categories:
            raise UnknownNameError(
                f"category {category!r} is not part of this {self.name} dataset ({self.root})",
                f"choose one of: {', '.join(self._categories)}",
            )

    def _split_location(self, category: str, split: Split) -> Path:
        """Where the images of a split are expected (named in the "empty split" error)."""
        return self.root / category / split

    def _available_categories(self) -> list[str]:
        raise NotImplementedError

    def _scan(self, category: str, split: Split) -> list[Sample]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, categories={self._categories!r})"
