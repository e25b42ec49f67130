"""Code fingerprint of a result: the package version plus ``git describe`` of the source tree when it is a clone.

Every result row records it, so a run folder resumed after a code change shows which rows came from which code
(the tables warn when one folder mixes fingerprints; docs/architecture.md).
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from vlmad_runtime.version import __version__


@lru_cache(maxsize=1)
def git_describe() -> str | None:
    """``git describe --always --dirty --tags`` of the checkout vlmad runs from; None outside a git clone."""
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = res.stdout.strip()
    return text if res.returncode == 0 and text else None


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """``0.2.0`` for an installed release, ``0.2.0+g1a2b3c4-dirty`` style for a git checkout."""
    git = git_describe()
    return f"{__version__}+{git}" if git else __version__


def mixed_fingerprints(rows: list[dict]) -> list[str]:
    """The distinct fingerprints of ``rows`` when there are several (rows from before this field count as
    'unrecorded'); [] when they agree."""
    seen = sorted({str(r.get("code_fingerprint") or "unrecorded") for r in rows})
    return seen if len(seen) > 1 else []
