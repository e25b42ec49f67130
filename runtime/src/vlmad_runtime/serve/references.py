"""Named reference sets (few-shot memories) on disk, and the per-set detector memories computed from them.

On disk (``<data-dir>/references/``) a set is one zip file ``<name>.zip`` holding ``manifest.json`` and the images
as PNG (exactly the RGB pixels that were validated on upload: EXIF rotation applied, metadata dropped). A set is
written to a temporary file in the same directory, fsynced and moved over the old one with ``os.replace``, so a
crash leaves either the old or the new set, never half of one; a restart sees every completed upload. Names are
checked against ``^[A-Za-z0-9_-]{1,64}$`` and the resolved path must lie inside the directory, so no request can
name a file anywhere else.

In memory, a model holds one few-shot memory at a time. The model worker fits a set once (through the served
model's ``fit_references``, :mod:`vlmad_runtime.serve.model`) and keeps the resulting memory in a byte-bounded LRU
(:class:`MemoryCache`): switching sets is then ``use_references``, a few attribute assignments.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlmad_runtime.fileio import fsync_dir
from vlmad_runtime.serve.limits import SET_NAME_RE, ApiError, validate_set_name
from vlmad_runtime.serve.model import ReferenceMemory

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class ReferenceSetInfo:
    """What ``GET /v1/references/{name}`` shows."""

    name: str
    version: str
    created: str
    count: int
    images: list[dict[str, Any]] = field(default_factory=list)  # per image: file, width, height, original name
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _exists(name: str) -> ApiError:
    return ApiError(
        409,
        "reference_set_exists",
        f"reference set {name!r} already exists",
        "DELETE it first, or POST with ?replace=true to overwrite it",
    )


class ReferenceSetNotFoundError(ApiError):
    def __init__(self, name: str) -> None:
        super().__init__(
            404,
            "unknown_reference_set",
            f"reference set {name!r} does not exist",
            "create it with POST /v1/references/{name} (K normal images), or list the existing sets "
            "with GET /v1/references",
        )


class ReferenceStore:
    """Reference sets under ``root`` (one zip file each); thread-safe."""

    def __init__(self, data_dir: str | Path, max_sets: int = 256) -> None:
        self.root = (Path(data_dir).expanduser() / "references").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_sets = int(max_sets)
        self._lock = threading.Lock()
        self._index: dict[str, ReferenceSetInfo] = {}
        self.problems: list[str] = []  # sets that could not be read at start (reported by /v1/info)
        self._load_index()

    # ------------------------------------------------------------------ paths
    def _path(self, name: str) -> Path:
        validate_set_name(name)
        path = (self.root / f"{name}.zip").resolve()
        if path.parent != self.root:  # cannot happen with the name pattern; never trust one check alone
            raise ApiError(400, "invalid_reference_set_name", f"invalid reference set name {name!r}")
        return path

    def _load_index(self) -> None:
        for stale in self.root.glob(".tmp-*"):  # interrupted writes
            try:
                stale.unlink()
            except OSError:
                pass
        for path in sorted(self.root.glob("*.zip")):
            name = path.stem
            if not SET_NAME_RE.fullmatch(name):
                continue
            try:
                self._index[name] = self._read_manifest(path)
            except Exception as err:  # a damaged file must not stop the service
                self.problems.append(f"{path.name}: {err}")

    @staticmethod
    def _read_manifest(path: Path) -> ReferenceSetInfo:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read(MANIFEST))
        data.pop("format", None)
        return ReferenceSetInfo(**data)

    # ------------------------------------------------------------------ queries
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._index)

    def list(self) -> list[ReferenceSetInfo]:
        with self._lock:
            return [self._index[n] for n in sorted(self._index)]

    def get(self, name: str) -> ReferenceSetInfo:
        validate_set_name(name)
        with self._lock:
            info = self._index.get(name)
        if info is None:
            raise ReferenceSetNotFoundError(name)
        return info

    def __len__(self) -> int:
        return len(self._index)

    def load_images(self, name: str) -> tuple[ReferenceSetInfo, list[Image.Image]]:
        """The current version of a set and its images (RGB)."""
        path = self._path(name)
        with self._lock:
            if name not in self._index:
                raise ReferenceSetNotFoundError(name)
            try:
                zf = zipfile.ZipFile(path)
            except FileNotFoundError:
                raise ReferenceSetNotFoundError(name) from None
        with zf:
            info_data = json.loads(zf.read(MANIFEST))
            info_data.pop("format", None)
            info = ReferenceSetInfo(**info_data)
            images = []
            for item in info.images:
                with Image.open(io.BytesIO(zf.read(item["file"]))) as im:
                    images.append(im.convert("RGB"))
        return info, images

    # ------------------------------------------------------------------ changes
    def put(
        self, name: str, images: Iterable[Image.Image], original_names: Sequence[str | None] = (), replace: bool = False
    ) -> tuple[ReferenceSetInfo, bool]:
        """Store ``images`` as set ``name`` atomically; returns (info, created).

        ``images`` may be a generator: each image is PNG-encoded into the new file as soon as it is produced, so
        an upload holds one decoded image at a time. A full disk answers 507 and leaves the old set in place.
        """
        path = self._path(name)
        self._check_writable(name, replace)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".zip", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                info = self._write_zip(fh, name, images, original_names)
                fh.flush()
                os.fsync(fh.fileno())
            with self._lock:
                created = name not in self._index
                if not created and not replace:  # created concurrently since the check above
                    raise _exists(name)
                os.replace(tmp, path)
                self._index[name] = info
            fsync_dir(self.root)
        except BaseException as err:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ApiError(
                    507,
                    "insufficient_storage",
                    f"no space left to store reference set {name!r} in {self.root} ({err.strerror})",
                    "free disk space on the server (or delete unused reference sets) and retry",
                ) from None
            raise
        return info, created

    def _check_writable(self, name: str, replace: bool) -> None:
        with self._lock:
            exists = name in self._index
            if exists and not replace:
                raise _exists(name)
            if not exists and len(self._index) >= self.max_sets:
                raise ApiError(
                    507,
                    "too_many_reference_sets",
                    f"the service already holds {len(self._index)} reference sets (limit {self.max_sets})",
                    "delete sets that are no longer used",
                )

    @staticmethod
    def _write_zip(
        fh: Any, name: str, images: Iterable[Image.Image], original_names: Sequence[str | None]
    ) -> ReferenceSetInfo:
        """Write the images (one at a time) and then the manifest into an open file; returns the set's info."""
        entries, total = [], 0
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, img in enumerate(images):
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="PNG", compress_level=1)
                zf.writestr(f"{i:03d}.png", buf.getvalue())
                total += buf.tell()
                orig = original_names[i] if i < len(original_names) else None
                entries.append(
                    {
                        "file": f"{i:03d}.png",
                        "width": img.width,
                        "height": img.height,
                        "original_name": (orig or "")[:200],
                    }
                )
            if not entries:
                raise ApiError(400, "no_images", "a reference set needs at least one image")
            info = ReferenceSetInfo(
                name=name,
                version=uuid.uuid4().hex,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                count=len(entries),
                images=entries,
                bytes=total,
            )
            zf.writestr(MANIFEST, json.dumps(dict(info.as_dict(), format=FORMAT_VERSION), indent=1))
        return info

    def delete(self, name: str) -> ReferenceSetInfo:
        path = self._path(name)
        with self._lock:
            info = self._index.pop(name, None)
            if info is None:
                raise ReferenceSetNotFoundError(name)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        fsync_dir(self.root)
        return info


class MemoryCache:
    """LRU of :class:`ReferenceMemory` keyed by (set name, version), bounded in bytes (always keeps the newest)."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple[str, str], ReferenceMemory] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> ReferenceMemory | None:
        with self._lock:
            mem = self._items.get(key)
            if mem is not None:
                self._items.move_to_end(key)
            return mem

    def put(self, key: tuple[str, str], memory: ReferenceMemory) -> None:
        with self._lock:
            for old in [k for k in self._items if k[0] == key[0] and k != key]:  # older versions of the set
                del self._items[old]
            self._items[key] = memory
            self._items.move_to_end(key)
            while len(self._items) > 1 and self.nbytes > self.max_bytes:
                self._items.popitem(last=False)

    def drop(self, name: str) -> None:
        with self._lock:
            for k in [k for k in self._items if k[0] == name]:
                del self._items[k]

    def __contains__(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._items.values())
