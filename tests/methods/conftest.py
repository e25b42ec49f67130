"""Fixtures shared by the method tests: the 4-layer tiny backbone (APRIL-GAN and AnomalyCLIP need several stages)."""

from __future__ import annotations

import pytest

from vlmad.backbones import ClipBackbone

ARCH = "vlmad-tiny-vit-4l"


@pytest.fixture(scope="module")
def bb4(weights_file, tmp_path_factory):
    """The tiny 4-layer backbone with its own text cache folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMAD_CACHE_DIR", str(tmp_path_factory.mktemp("bb4-cache")))
        return ClipBackbone.load(ARCH, checkpoint=str(weights_file(ARCH)))
