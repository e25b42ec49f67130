"""Names and readers of a study run folder's own files (below both the study runner and the report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STUDY_FILE = "study.json"


def load_study_file(run_dir: str | Path) -> dict[str, Any] | None:
    """``study.json`` of a run folder (spec, options, phases), None for a plain benchmark folder."""
    try:
        return json.loads((Path(run_dir) / STUDY_FILE).read_text())
    except (OSError, ValueError):
        return None
