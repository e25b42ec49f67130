"""Tables, plots, reports and heatmap overlays."""

from vlmad.report.overlay import RANDOM_WEIGHTS_STAMP, colorize, overlay_heatmap, side_by_side, stamp_image

__all__ = ["RANDOM_WEIGHTS_STAMP", "colorize", "overlay_heatmap", "side_by_side", "stamp_image"]
