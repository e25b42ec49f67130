"""MVTec AD reader (and the MVTec-style folder scan that VisA's converted layout reuses).

Layout: ``<root>/<category>/train/good/*``, ``test/good/*``, ``test/<defect>/*`` and
``ground_truth/<defect>/<stem>_mask.png``. Listing checks everything that can be checked from file names
(missing masks, orphan masks, empty splits) so a broken copy fails before hours of inference, not after;
image/mask size agreement is checked lazily by :func:`vlmad_runtime.images.check_sample`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vlmad.data.base import BaseDataset, Split, list_images, list_subdirs, match_masks, parse_names
from vlmad.data.sample import Sample
from vlmad_runtime.errors import DatasetLayoutError, UnknownNameError

#: The 15 official MVTec AD categories.
MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)

GOOD = "good"


def is_mvtec_style_category(path: Path) -> bool:
    """A category folder has a ``train/`` or a ``test/`` folder (test-only copies are fine for zero-shot)."""
    return (path / "train").is_dir() or (path / "test").is_dir()


def scan_mvtec_style(category_dir: Path, category: str, split: Split, mask_suffix: str, layout: str) -> list[Sample]:
    """List one split of an MVTec-style category folder.

    ``mask_suffix`` is ``"_mask"`` for MVTec AD and ``""`` for VisA's converted layout. Raises
    :class:`DatasetLayoutError` naming the offending path for every inconsistency.
    """
    split_dir = category_dir / split
    if not split_dir.is_dir():
        extra = " (zero-shot methods need only test/)" if split == "train" else ""
        raise DatasetLayoutError(f"{split} folder {split_dir} does not exist", f"create it{extra}; {layout}")

    if split == "train":
        others = [d for d in list_subdirs(split_dir) if d.name != GOOD]
        if others:
            raise DatasetLayoutError(
                f"train folder {split_dir} contains {others[0].name}/: the train split may only hold normal images",
                f"move normal references to {split_dir / GOOD} and anything else out of train/; {layout}",
            )
        return [Sample(p, "normal", category, "train", GOOD) for p in list_images(split_dir / GOOD)]

    loose = list_images(split_dir)
    if loose:
        raise DatasetLayoutError(
            f"image {loose[0]} lies directly in {split_dir}",
            f"put normal test images in {split_dir / GOOD} and defective ones in {split_dir}/<defect>/; {layout}",
        )
    good = list_images(split_dir / GOOD)
    samples = [Sample(p, "normal", category, "test", GOOD) for p in good]
    defect_dirs = [d for d in list_subdirs(split_dir) if d.name != GOOD]
    gt_root = category_dir / "ground_truth"
    anomalous = {d.name: list_images(d) for d in defect_dirs}
    anomalous = {k: v for k, v in anomalous.items() if v}
    if anomalous and not gt_root.is_dir():
        raise DatasetLayoutError(
            f"ground-truth folder {gt_root} does not exist but {split_dir} has anomalous images",
            f"restore {gt_root}/<defect>/<stem>{mask_suffix}.png from the original dataset; {layout}",
        )
    for defect, images in anomalous.items():
        pairs = match_masks(images, gt_root / defect, (mask_suffix,), layout=layout)
        samples += [Sample(p, "anomalous", category, "test", defect, pairs[p]) for p in images]
    for gt_dir in list_subdirs(gt_root):
        if gt_dir.name != GOOD and gt_dir.name not in anomalous and list_images(gt_dir):
            raise DatasetLayoutError(
                f"masks in {gt_dir} have no images (no {split_dir / gt_dir.name} folder with images)",
                f"restore the test images or delete the masks; {layout}",
            )
    return samples


class MVTecAD(BaseDataset):
    """MVTec AD on disk; ``categories`` (names or ``"a,b"``) selects a subset, None means all found."""

    name = "mvtec"
    layout_hint = (
        "expected MVTec AD layout <root>/<category>/train/good/*.png, <category>/test/{good,<defect>}/*.png "
        "and <category>/ground_truth/<defect>/<stem>_mask.png"
    )
    mask_suffix = "_mask"

    def __init__(self, root: str | Path, categories: str | Iterable[str] | None = None) -> None:
        try:
            super().__init__(root, categories)
        except UnknownNameError:
            self._explain_unusable_category(categories)
            raise

    def _available_categories(self) -> list[str]:
        found = [d.name for d in list_subdirs(self.root) if is_mvtec_style_category(d)]
        if not found and is_mvtec_style_category(self.root):
            raise DatasetLayoutError(
                f"{self.root} looks like a single category folder, not a {self.name} dataset root",
                f"pass its parent {self.root.parent} as root and categories={self.root.name!r}",
            )
        return found

    def _explain_unusable_category(self, categories: str | Iterable[str] | None) -> None:
        """A requested folder that exists but has no train/ or test/ is a layout error, not a typo."""
        for name in parse_names(categories) or []:
            folder = self.root / name
            if folder.is_dir() and not is_mvtec_style_category(folder):
                raise DatasetLayoutError(
                    f"category folder {folder} is empty: it has neither train/ nor test/", self.layout_hint
                )

    def _split_location(self, category: str, split: Split) -> Path:
        return self.root / category / split / GOOD if split == "train" else self.root / category / split

    def _scan(self, category: str, split: Split) -> list[Sample]:
        return scan_mvtec_style(self.root / category, category, split, self.mask_suffix, self.layout_hint)
