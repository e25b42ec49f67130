"""Datasets: robust image/mask loading, MVTec AD / VisA / folder readers and synthetic data.

Every reader follows :class:`~vlmad.data.base.DatasetReader` (``.name``, ``.categories``,
``.samples(category, split)``, ``.has_masks(category)``), so the harness never needs to know which one it has.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vlmad.data.base import IMAGE_EXTENSIONS, BaseDataset, DatasetReader
from vlmad.data.folder import FolderDataset
from vlmad.data.mvtec import MVTEC_CATEGORIES, MVTecAD
from vlmad.data.sample import Sample
from vlmad.data.synthetic import ANOMALY_KINDS, LAYOUTS, make_dataset, normal_image, paste_anomaly
from vlmad.data.visa import VISA_CATEGORIES, VisA
from vlmad_runtime.errors import UnknownNameError
from vlmad_runtime.images import DEFAULT_MAX_PIXELS, check_sample, image_size, load_image, load_mask

DATASET_KINDS: dict[str, type[BaseDataset]] = {"mvtec": MVTecAD, "visa": VisA, "folder": FolderDataset}


def load_dataset(kind: str, root: str | Path, categories: str | Iterable[str] | None = None) -> DatasetReader:
    """Open the dataset of ``kind`` ("mvtec", "visa" or "folder") at ``root``; VisA's layout is detected."""
    try:
        cls = DATASET_KINDS[kind.lower()]
    except KeyError:
        raise UnknownNameError(f"unknown dataset kind {kind!r}", f"use one of: {', '.join(DATASET_KINDS)}") from None
    return cls(root, categories)


__all__ = [
    "ANOMALY_KINDS",
    "DATASET_KINDS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "MVTEC_CATEGORIES",
    "VISA_CATEGORIES",
    "BaseDataset",
    "DatasetReader",
    "FolderDataset",
    "MVTecAD",
    "Sample",
    "VisA",
    "check_sample",
    "image_size",
    "load_dataset",
    "load_image",
    "load_mask",
    "make_dataset",
    "normal_image",
    "paste_anomaly",
]
