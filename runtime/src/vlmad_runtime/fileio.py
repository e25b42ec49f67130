"""Crash-safe file writes shared by every module that persists state (caches, results, heads, reference sets).

A file is written to a temporary sibling, flushed to disk and moved over the target with ``os.replace``, so a
reader sees either the old or the new file, never a half-written one, whatever happens mid-write.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: some filesystems refuse directory fsync)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call ``write(tmp_path)`` then move the result over ``path`` atomically (temp file removed on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    return atomic_save(path, lambda tmp: tmp.write_bytes(data), durable)


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> Path:
    return atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""), durable)


def sha256_file(path: str | Path, block_size: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in blocks (the one file-hashing helper of vlmad and its runtime)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()
