"""The benchmark's result store: ``results.jsonl`` (one JSON row per line) and per-row score files.

Crash safety: a row is appended with a single ``os.write`` of the whole line on an ``O_APPEND`` descriptor,
followed by ``fsync``; its score file is written first (temp file + rename), so a row on disk always has its
scores. A crash can at worst leave a truncated last line, which :func:`load_results` ignores (with a warning)
and the next append starts on a fresh line. Rows are identified by ``row_key``; when a key appears twice the
last row wins.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vlmad_runtime.errors import VlmadError
from vlmad_runtime.fileio import atomic_write_text

RESULTS_FILE = "results.jsonl"
SCORES_DIR = "scores"
SCORE_FIELDS = ["path", "label", "defect_type", "score", "error"]


def results_path(path: str | Path) -> Path:
    """Accept a run folder or the results file itself."""
    p = Path(path).expanduser()
    return p / RESULTS_FILE if p.is_dir() or p.suffix != ".jsonl" else p


class ResultsStore:
    """Append-only JSONL store; safe against crashes (not against two writers: the runner holds a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = results_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._needs_newline = self._ends_without_newline()

    def _ends_without_newline(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == 0:
                    return False
                fh.seek(-1, os.SEEK_END)
                return fh.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def append(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n"
        data = (("\n" if self._needs_newline else "") + line).encode("utf-8")
        fd = os.open(str(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            while written < len(data):  # regular files write everything at once; be correct anyway
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        self._needs_newline = False

    def rows(self) -> list[dict[str, Any]]:
        return load_results(self.path) if self.path.exists() else []

    def keys(self, statuses: Iterable[str] | None = None) -> set[str]:
        wanted = set(statuses) if statuses is not None else None
        return {r["row_key"] for r in self.rows() if wanted is None or r.get("status") in wanted}


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every parseable row in file order; an unparseable line is skipped with a warning (a truncated last line,
    from a crash mid-write, is expected and only noted)."""
    p = results_path(path)
    if not p.exists():
        raise VlmadError(f"no benchmark results at {p}", "run `vlmad benchmark ... --out DIR` first")
    with open(p, "rb") as fh:
        lines = fh.read().split(b"\n")
    last = len(lines) - 1
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            where = "truncated last line (interrupted write)" if i == last else f"corrupt line {i + 1}"
            warnings.warn(f"{p}: ignoring {where}", stacklevel=2)
            continue
        if isinstance(row, dict) and "row_key" in row:
            yield row


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a run (folder or ``results.jsonl``), one per row key (the last one written wins)."""
    by_key: dict[str, dict[str, Any]] = {}
    for row in iter_rows(path):
        by_key.pop(row["row_key"], None)
        by_key[row["row_key"]] = row
    return list(by_key.values())


# ---------------------------------------------------------------------------------------------------------------
# side files


def write_scores(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Per-image scores of one row: path (relative to the dataset root), label, defect_type, score, error."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SCORE_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records:
        score = rec.get("score")
        writer.writerow({**rec, "score": "" if score is None else repr(float(score))})
    atomic_write_text(path, buf.getvalue())


def read_scores(path: str | Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["score"] = float(r["score"]) if r.get("score") else None
    return rows


class RunLock:
    """Exclusive lock on the run folder, so two benchmark processes never interleave rows of one grid.

    The kernel drops the lock when the process dies (even by SIGKILL), so a crashed run never blocks its resume.
    """

    def __init__(self, folder: Path, name: str = ".lock", holder: str = "vlmad benchmark") -> None:
        self.path = folder / name
        self.holder = holder
        self._fh = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, single-writer by convention
            return self
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            raise VlmadError(
                f"another {self.holder} is writing to {self.path.parent}",
                "wait for it to finish, or pass another --out folder",
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def append_invocation(path: Path, record: Mapping[str, Any]) -> None:
    """``run.json`` keeps every invocation that wrote to the folder (a resumed grid has several)."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("invocations"), list):
            data = {"invocations": []}
    except (OSError, ValueError):
        data = {"invocations": []}
    data["invocations"].append(dict(record))
    data["latest"] = dict(record)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
