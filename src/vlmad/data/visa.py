"""VisA reader for both layouts in circulation.

* **raw** (the official download): ``<root>/split_csv/1cls.csv`` with columns
  ``object,split,label,image,mask`` (paths relative to root, label ``normal``/``anomaly``, mask empty for
  normal images); images under ``<object>/Data/Images/{Normal,Anomaly}/*.JPG``, masks
  ``<object>/Data/Masks/Anomaly/*.png`` whose defect pixels are non-zero label values
  (:func:`vlmad_runtime.images.load_mask` binarises ``!= 0``).
* **converted** (MVTec-like, produced by the common preparation scripts): ``<object>/train/good``,
  ``test/good``, ``test/bad`` and ``ground_truth/bad/<stem>.png`` (no ``_mask`` suffix).

The layout is detected from the presence of ``split_csv/1cls.csv``. Anomalous samples get defect type
``"bad"`` in both layouts, so results do not depend on which copy was used.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from vlmad.data.base import BaseDataset, Split, list_subdirs
from vlmad.data.mvtec import is_mvtec_style_category, scan_mvtec_style
from vlmad.data.sample import Sample
from vlmad_runtime.errors import DatasetLayoutError, UnknownNameError

#: The 12 VisA objects.
VISA_CATEGORIES: tuple[str, ...] = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)

CSV_RELPATH = Path("split_csv") / "1cls.csv"
CSV_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
VisALayout = Literal["auto", "raw", "converted"]

RAW_HINT = (
    "VisA raw layout: <root>/split_csv/1cls.csv with columns object,split,label,image,mask and the files it "
    "lists (paths relative to <root>)"
)
CONVERTED_HINT = (
    "VisA converted layout: <root>/<object>/train/good, test/good, test/bad and ground_truth/bad/<stem>.png"
)


def _check_inside_root(value: str, column: str, where: str) -> None:
    """Refuse a CSV path that would be read outside the dataset root: absolute (POSIX, drive or UNC) or with a
    ``..`` component (either separator). The split file is data, possibly downloaded; it must not choose which
    files on the machine are read. Symlinks inside the root are the user's own choice and are followed."""
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        problem = "is absolute"
    elif ".." in windows.parts:  # PureWindowsPath splits on both '/' and '\\'
        problem = "contains '..'"
    else:
        return
    raise DatasetLayoutError(
        f"{where}: {column} path {value!r} {problem}, which would read a file outside the dataset root",
        "paths in split_csv/1cls.csv must be relative to the dataset root and stay inside it "
        "(e.g. candle/Data/Images/Normal/0000.JPG)",
    )


@dataclass(frozen=True)
class _Row:
    split: str
    label: str
    image: str
    mask: str
    line: int


class VisA(BaseDataset):
    """VisA on disk, raw or converted layout (``layout="auto"`` detects it; force with "raw"/"converted")."""

    name = "visa"
    layout_hint = f"{RAW_HINT}; or {CONVERTED_HINT}"

    def __init__(
        self, root: str | Path, categories: str | Iterable[str] | None = None, layout: VisALayout = "auto"
    ) -> None:
        if layout not in ("auto", "raw", "converted"):
            raise UnknownNameError(f"unknown VisA layout {layout!r}", "use 'auto', 'raw' or 'converted'")
        self._requested_layout = layout
        self.layout: Literal["raw", "converted"] = "raw"
        self._rows: dict[str, list[_Row]] = {}
        super().__init__(root, categories)

    @property
    def csv_path(self) -> Path:
        return self.root / CSV_RELPATH

    def _available_categories(self) -> list[str]:
        layout = self._requested_layout
        if layout == "auto":
            layout = "raw" if self.csv_path.is_file() else "converted"
        self.layout = layout
        if layout == "raw":
            return self._read_csv()
        found = [d.name for d in list_subdirs(self.root) if is_mvtec_style_category(d)]
        if not found:
            if any((d / "Data" / "Images").is_dir() for d in list_subdirs(self.root)):
                raise DatasetLayoutError(
                    f"{self.csv_path} does not exist, but {self.root} holds VisA raw object folders",
                    f"restore split_csv/1cls.csv from the VisA download; {RAW_HINT}",
                )
            if is_mvtec_style_category(self.root):
                raise DatasetLayoutError(
                    f"{self.root} looks like a single VisA object folder, not the dataset root",
                    f"pass its parent {self.root.parent} as root and categories={self.root.name!r}",
                )
            raise DatasetLayoutError(f"no VisA objects found under {self.root}", self.layout_hint)
        return found

    def _read_csv(self) -> list[str]:
        path = self.csv_path
        if not path.is_file():
            raise DatasetLayoutError(f"split file {path} does not exist", RAW_HINT)
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                columns = [c.strip() for c in (reader.fieldnames or [])]
                missing = [c for c in CSV_COLUMNS if c not in columns]
                if missing:
                    raise DatasetLayoutError(
                        f"split file {path} lacks column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})",
                        f"the header must be {','.join(CSV_COLUMNS)}; {RAW_HINT}",
                    )
                reader.fieldnames = columns
                for raw in reader:
                    self._add_row(raw, reader.line_num, path)
        except UnicodeDecodeError as err:
            raise DatasetLayoutError(f"split file {path} is not UTF-8 text ({err})", RAW_HINT) from None
        except csv.Error as err:
            raise DatasetLayoutError(f"split file {path} is not valid CSV ({err})", RAW_HINT) from None
        if not self._rows:
            raise DatasetLayoutError(f"split file {path} lists no images", RAW_HINT)
        return sorted(self._rows)

    def _add_row(self, raw: dict[str, str | None], line: int, path: Path) -> None:
        def field(name: str) -> str:
            value = raw.get(name)
            return value.strip() if isinstance(value, str) else ""

        where = f"{path}, line {line}"
        obj, split, label, image, mask = (field(c) for c in CSV_COLUMNS)
        if not obj and not image:
            return  # blank line
        if not obj or not image:
            raise DatasetLayoutError(f"{where}: empty 'object' or 'image' field", RAW_HINT)
        if split not in ("train", "test"):
            raise DatasetLayoutError(f"{where}: split {split!r} is neither 'train' nor 'test'", RAW_HINT)
        label = label.lower()
        if label not in ("normal", "anomaly"):
            raise DatasetLayoutError(f"{where}: label {label!r} is neither 'normal' nor 'anomaly'", RAW_HINT)
        for column, value in (("image", image), ("mask", mask)):
            if value:
                _check_inside_root(value, column, where)
        if label == "anomaly" and not mask:
            raise DatasetLayoutError(
                f"{where}: anomalous image {self.root / image} has no mask", "fill in its 'mask' column"
            )
        if label == "normal" and mask:
            raise DatasetLayoutError(
                f"{where}: normal image {self.root / image} has mask {self.root / mask}",
                "normal images must have an empty 'mask' column; fix the label or the mask",
            )
        self._rows.setdefault(obj, []).append(_Row(split, label, image, mask, line))

    def _split_location(self, category: str, split: Split) -> Path:
        if self.layout == "raw":
            return self.csv_path
        folder = self.root / category / split
        return folder / "good" if split == "train" else folder

    def _scan(self, category: str, split: Split) -> list[Sample]:
        if self.layout == "converted":
            return scan_mvtec_style(self.root / category, category, split, "", CONVERTED_HINT)
        samples: list[Sample] = []
        seen: dict[Path, int] = {}
        for row in self._rows[category]:
            if row.split != split:
                continue
            image = self.root / row.image
            if image in seen:
                raise DatasetLayoutError(
                    f"{self.csv_path}, line {row.line}: image {image} already listed on line {seen[image]}",
                    "list every image once per split",
                )
            seen[image] = row.line
            if not image.is_file():
                raise DatasetLayoutError(
                    f"{self.csv_path}, line {row.line}: image {image} does not exist",
                    "restore the file or remove its row from the csv (paths are relative to the dataset "
                    "root), or select only the objects you have with categories=",
                )
            mask = self.root / row.mask if row.mask else None
            if mask is not None and not mask.is_file():
                raise DatasetLayoutError(
                    f"{self.csv_path}, line {row.line}: mask {mask} does not exist",
                    "restore the mask or remove its row from the csv; paths are relative to the dataset root",
                )
            if row.label == "normal":
                samples.append(Sample(image, "normal", category, split, "good"))
            else:
                samples.append(Sample(image, "anomalous", category, split, "bad", mask))
        return samples
