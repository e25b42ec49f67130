"""What `vlmad detect` accepts as images: folders (recursive or not), globs, list files, the service's formats."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlmad.cli.inputs import collect_images
from vlmad.data.base import IMAGE_EXTENSIONS
from vlmad_runtime.errors import VlmadError


def _tree(root: Path) -> dict[str, Path]:
    files = {"a": root / "good" / "a.png", "b": root / "bad" / "scratch" / "b.webp", "c": root / "c.jpg"}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
    (root / "notes.md").write_text("not an image")
    return files


def test_folder_without_images_directly_hints_at_recursive(tmp_path):
    files = _tree(tmp_path)
    files["c"].unlink()
    with pytest.raises(VlmadError) as err:
        collect_images([tmp_path])
    assert "subfolders hold 2" in err.value.message and "--recursive" in err.value.hint


def test_recursive_finds_every_accepted_image_in_a_stable_order(tmp_path):
    files = _tree(tmp_path)
    assert collect_images([tmp_path], recursive=True) == [files["b"], files["c"], files["a"]]
    assert collect_images([tmp_path]) == [files["c"]]


def test_glob_patterns_and_list_files(tmp_path, monkeypatch):
    files = _tree(tmp_path)
    assert collect_images([str(tmp_path / "**" / "*.webp")]) == [files["b"]]
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "batch.txt"
    listing.write_text("# parts of lot 7\nc.jpg\n\ngood/a.png\n")
    assert collect_images([listing]) == [Path("c.jpg"), Path("good/a.png")]
    listing.write_text("c.jpg\nmissing.png\n")
    with pytest.raises(VlmadError, match="1 missing"):
        collect_images([listing])
    with pytest.raises(VlmadError, match="matches no image"):
        collect_images([str(tmp_path / "*.tiff")])


def test_detect_accepts_every_format_the_service_accepts():
    from vlmad_runtime.serve.limits import DEFAULT_FORMATS

    registered = Image.registered_extensions()
    for fmt in DEFAULT_FORMATS:
        assert any(registered.get(ext) == fmt for ext in IMAGE_EXTENSIONS), fmt
