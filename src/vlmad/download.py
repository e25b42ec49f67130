"""`vlmad download`: MVTec AD and VisA from their official locations, verified, resumable and safely unpacked.

Steps: the archive is fetched into ``<root>/.download/<file>.part`` (an interrupted or dropped transfer resumes
with an HTTP ``Range`` request, by itself a few times and on the next run), its SHA-256 is checked against the
published value, every member is checked before anything is written (no absolute path, no ``..``, no link or
device pointing outside ``root``), and the tree is moved into ``root``. VisA is converted on the way from the
official layout (``split_csv/1cls.csv`` + ``Data/Images``) to the MVTec-like "converted" layout of
:mod:`vlmad.data.visa` (``<object>/train/good``, ``test/good``, ``test/bad``, ``ground_truth/bad/<stem>.png``),
following the official 1-class split. ``root`` is then what ``--root`` of the other commands expects.

The URLs and checksums are the ones anomalib uses for the same archives.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vlmad_runtime.errors import VlmadError

CHUNK = 1 << 20
MARKER = ".vlmad-download.json"
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Archive:
    """One downloadable dataset archive."""

    name: str
    url: str
    sha256: str
    license: str


ARCHIVES: dict[str, Archive] = {
    "mvtec": Archive(
        "MVTec AD",
        "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/download/420938113-1629960298/"
        "mvtec_anomaly_detection.tar.xz",
        "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        "CC BY-NC-SA 4.0 (non-commercial use)",
    ),
    "visa": Archive(
        "VisA",
        "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        "CC BY 4.0",
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "vlmad-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs of ARCHIVES or --url
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file is already complete
            return None
        raise VlmadError(
            f"download of {url} failed: HTTP {err.code} {err.reason}", "check the URL (--url) or try again later"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise VlmadError(
            f"cannot reach {url}: {reason}",
            "vlmad download needs network access; on an offline machine download the archive "
            "elsewhere, put it into <root>/.download/ and rerun (it is verified, not fetched again)",
        ) from None


def _fetch_once(url: str, part: Path, progress: Progress | None, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout)
    if response is None:
        return
    with response:
        if offset and response.status != 206:  # the server ignored Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        done = offset
        with open(part, "ab" if offset else "wb") as fh:
            while block := response.read(CHUNK):
                fh.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
        if total is not None and done < total:
            raise ConnectionError(f"connection closed at {done} of {total} bytes")


def fetch(url: str, part: Path, progress: Progress | None = None, attempts: int = 4, timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, resuming what is there; a dropped connection is retried with Range."""
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            _fetch_once(url, part, progress, timeout)
            return
        except (OSError, http.client.HTTPException) as err:  # dropped connection, timeout, short read
            if attempt == attempts:
                size = part.stat().st_size if part.exists() else 0
                raise VlmadError(
                    f"download of {url} interrupted at {size} bytes: {err}",
                    "rerun the same command: it resumes where it stopped",
                ) from None
            time.sleep(min(2.0**attempt, 10.0) * 0.1)


def check_members(archive: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Every member, refused as a whole if one could write outside ``dest`` (checked before extracting)."""
    root = dest.resolve()
    members = archive.getmembers()
    for m in members:
        name = PurePosixPath(m.name)
        if name.is_absolute() or ".." in name.parts or m.name.startswith(("/", "\\")):
            raise VlmadError(
                f"unsafe archive member {m.name!r} (absolute path or '..')",
                "the archive is refused; it is not the official one (check --url)",
            )
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise VlmadError(f"unsafe archive member {m.name!r} (device or fifo)", "the archive is refused")
        if m.issym() or m.islnk():
            base = root if m.islnk() else (root / m.name).parent
            target = (base / m.linkname).resolve()
            if PurePosixPath(m.linkname).is_absolute() or not target.is_relative_to(root):
                raise VlmadError(
                    f"unsafe archive member {m.name!r}: link to {m.linkname!r} outside the target",
                    "the archive is refused; it is not the official one (check --url)",
                )
    return members


def extract(archive_path: Path, dest: Path) -> None:
    """Unpack after :func:`check_members`; tarfile's ``data`` filter is a second line of defence."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path, "r:*") as archive:
        members = check_members(archive, dest)
        archive.extractall(dest, members=members, filter="data")


def _move_tree(src: Path, dest: Path) -> None:
    for item in sorted(src.iterdir()):
        target = dest / item.name
        if target.exists():
            if target.is_dir() and item.is_dir():
                _move_tree(item, target)
                continue
            raise VlmadError(f"{target} already exists", "download into a new or empty --root")
        os.replace(item, target)


def convert_visa(raw: Path, dest: Path) -> int:
    """Official VisA layout -> MVTec-like layout, by the 1-class split file; returns the number of images."""
    csv_path = raw / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise VlmadError(f"{csv_path} missing from the VisA archive", "the archive is not the official VisA")
    n = 0
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            label = "good" if row["label"] == "normal" else "bad"
            image = raw / row["image"]
            target = dest / row["object"] / row["split"] / label / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(image, target)
            if label == "bad" and row.get("mask"):
                mask = dest / row["object"] / "ground_truth" / "bad" / f"{image.stem}.png"
                mask.parent.mkdir(parents=True, exist_ok=True)
                os.replace(raw / row["mask"], mask)
            n += 1
    return n


def download_dataset(
    kind: str,
    root: str | Path,
    url: str | None = None,
    sha256: str | None = None,
    keep_archive: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Download, verify and unpack dataset ``kind`` ("mvtec" or "visa") into ``root``; returns ``root``."""
    if kind not in ARCHIVES:
        raise VlmadError(f"unknown dataset {kind!r} to download", f"use one of: {', '.join(ARCHIVES)}")
    spec = ARCHIVES[kind]
    url, expected = url or spec.url, (sha256 or spec.sha256).lower()
    root = Path(root).expanduser()
    if (root / MARKER).is_file():
        log(f"{spec.name} is already in {root} ({MARKER}); nothing to do")
        return root
    cache = root / ".download"
    archive = cache / PurePosixPath(url.split("?", 1)[0]).name
    part = archive.with_name(archive.name + ".part")
    if not archive.is_file():
        log(f"downloading {spec.name} ({spec.license}) from {url}")
        fetch(url, part, progress)
        actual = sha256_of(part)
        if actual != expected:
            part.unlink()
            raise VlmadError(
                f"checksum mismatch for {url}: sha256 {actual}, expected {expected}",
                "the corrupt file was deleted; rerun to download it again (or check --url)",
            )
        os.replace(part, archive)
    elif sha256_of(archive) != expected:
        raise VlmadError(f"{archive} does not have the expected sha256 {expected}", "delete it and rerun")
    log(f"verified sha256 {expected[:12]}…; extracting into {root}")
    staging = cache / f"extract-{kind}"
    shutil.rmtree(staging, ignore_errors=True)
    extract(archive, staging)
    if kind == "visa":
        log(f"converted {convert_visa(staging, root)} VisA images to the MVTec-like layout")
    else:
        _move_tree(staging, root)
    shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    (root / MARKER).write_text(json.dumps({"dataset": kind, "url": url, "sha256": expected}, indent=2) + "\n")
    return root
