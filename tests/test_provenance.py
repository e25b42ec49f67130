"""Code fingerprint in result rows and the tables' warning when one run folder mixes fingerprints."""

from __future__ import annotations

import subprocess

from vlmad.bench.tables import fingerprint_warning
from vlmad.provenance import code_fingerprint, git_describe, mixed_fingerprints
from vlmad_runtime.version import __version__


def test_fingerprint_is_version_plus_git_describe():
    fp = code_fingerprint()
    assert fp.split("+", 1)[0] == __version__
    try:
        inside = (
            subprocess.run(
                ["git", "rev-parse", "--is-inside-work-tree"],
                capture_output=True,
                text=True,
                cwd=__file__.rsplit("/", 1)[0],
                check=False,
            ).stdout.strip()
            == "true"
        )
    except OSError:
        inside = False
    assert (git_describe() is not None) == inside
    if inside:
        assert fp == f"{__version__}+{git_describe()}"


def test_mixed_fingerprints_warning():
    same = [{"code_fingerprint": "0.2.0+g1"}, {"code_fingerprint": "0.2.0+g1"}]
    assert mixed_fingerprints(same) == [] and fingerprint_warning(same) == []
    mixed = same + [{"code_fingerprint": "0.2.0+g2"}, {}]
    assert mixed_fingerprints(mixed) == ["0.2.0+g1", "0.2.0+g2", "unrecorded"]
    text = "\n".join(fingerprint_warning(mixed))
    assert "WARNING: rows from 3 code versions" in text and "0.2.0+g2" in text
