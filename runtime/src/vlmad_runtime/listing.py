"""Which files count as images: one rule for dataset readers, `vlmad detect` and `vlmad-runtime detect`."""

from __future__ import annotations

from pathlib import Path

#: Image file extensions accepted everywhere (compared case-insensitively: VisA ships ``.JPG``).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_file(path: Path) -> bool:
    """A visible file with an accepted image extension (hidden ones such as macOS ``._x.png`` are skipped)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name so every run sees the same order."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if is_image_file(p)), key=lambda p: p.name)
