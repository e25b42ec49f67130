"""What `vlmad detect` (and the reference options) accept as images: files, folders (optionally recursive),
glob patterns and list files with one path per line.

Accepted image formats are those of :data:`vlmad.data.base.IMAGE_EXTENSIONS`, the same set the service accepts
(PNG, JPEG, BMP, TIFF, WebP).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from pathlib import Path

from vlmad_runtime.errors import VlmadError

#: a file with one of these extensions is read as a list of image paths, one per line
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
GLOB_CHARS = frozenset("*?[")


def _formats() -> str:
    from vlmad.data.base import IMAGE_EXTENSIONS

    return ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    from vlmad.data.base import is_image_file, list_images

    if not recursive:
        return list_images(folder)
    return sorted(
        (p for p in folder.rglob("*") if is_image_file(p) and not _hidden(p, folder)),
        key=lambda p: p.relative_to(folder).parts,
    )


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _folder(folder: Path, recursive: bool) -> list[Path]:
    found = _images_in(folder, recursive)
    if found:
        return found
    if not recursive:
        deeper = _images_in(folder, True)
        if deeper:
            raise VlmadError(
                f"directory {folder} contains no images directly, but its subfolders hold {len(deeper)}",
                "add --recursive to score the images in subfolders too",
            )
    raise VlmadError(
        f"directory {folder} contains no images" + ("" if recursive else " (subfolders not searched)"),
        f"accepted formats: {_formats()}",
    )


def read_list_file(path: Path) -> Iterator[Path]:
    """Paths from a list file, read line by line (blank lines and `#` comments skipped). Relative paths are taken
    relative to the current directory, as `find ... > list.txt` writes them."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = line.strip()
            if text and not text.startswith("#"):
                yield Path(text).expanduser()


def _pattern(pattern: str) -> list[Path]:
    from vlmad.data.base import is_image_file

    found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if is_image_file(Path(p)))
    if not found:
        raise VlmadError(
            f"pattern {pattern!r} matches no image",
            f"accepted formats: {_formats()}; quote the pattern so vlmad expands it (** matches subfolders)",
        )
    return found


def collect_images(inputs: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Expand files, folders, glob patterns and list files into image paths, in the order given."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            out.extend(_folder(path, recursive))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            listed = list(read_list_file(path))
            missing = [p for p in listed if not p.exists()]
            if missing:
                raise VlmadError(
                    f"{path} lists {len(missing)} missing file(s), e.g. {missing[0]}",
                    "paths in a list file are relative to the current directory",
                )
            out.extend(collect_images(listed, recursive))
        elif path.exists():
            out.append(path)
        elif GLOB_CHARS & set(str(item)):
            out.extend(_pattern(str(path)))
        else:
            raise VlmadError(
                f"input {path} does not exist", "pass image files, folders, glob patterns or a .txt list of paths"
            )
    return out
