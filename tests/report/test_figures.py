"""Report figures render headless to PNG; the Pareto front is what it claims."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vlmad.report import figures as F

PNG = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_every_figure_renders():
    series = [F.Series("a 0-shot", [50.0, None, 70.0], [None, None, 2.0]), F.Series("b 1-shot", [60.0, 65.0, 80.0])]
    bars = F.category_bars(["x", "y", "macro mean"], [("i-AUROC", series), ("i-AP", series)], "t", False)
    curves = F.shot_curves([("i-AUROC", [F.Series("a", [50, 60, 70], [None, 1, 2], [0, 1, 4])])], "t", True)
    pareto = F.pareto_plot(
        [("MVTec AD", [F.ParetoPoint("a", 2.0, 70, True), F.ParetoPoint("b", 9.0, 60, False, False)])], "CPU", "i-AUROC"
    )
    matrix = F.matrix_plot(
        ["visa", "mvtec"],
        ["MVTec AD", "VisA"],
        np.array([[90.0, np.nan], [np.nan, 80.0]]),
        [["", "refused"], ["not run", ""]],
        "p-AUROC",
        "m",
        True,
    )
    deltas = F.delta_bars(["a", "b"], [("i-AUROC", [1.5, -2.0], [0.5, None]), ("p-AUROC", [0.0, 0.0], [])], "d")
    for png in (bars, curves, pareto, matrix, deltas):
        assert png.startswith(PNG) and min(_size(png)) > 100


def test_random_weights_stamp_changes_the_figure():
    series = [F.Series("a", [50.0, 70.0])]
    plain = F.category_bars(["x", "macro mean"], [("m", series)], "t", False)
    stamped = F.category_bars(["x", "macro mean"], [("m", series)], "t", True)
    assert plain != stamped and _size(stamped)[1] > _size(plain)[1]  # room for the banner


def test_pareto_front():
    pts = [(1.0, 50.0), (2.0, 70.0), (3.0, 65.0), (2.0, 60.0), (5.0, 90.0), (5.0, 90.0)]
    assert F.pareto_front(pts) == [True, True, False, False, True, True]
