"""Oracle: anomalib 2.7.0's WinCLIP pre-processing of image files (its ``read_image`` + the model's default
pre-processor transform). Runs in the oracle environment; must not import vlmad.

    python anomalib_preprocess.py OUT.npz IMAGE [IMAGE ...]

Saves ``image_{i}``: the (1, 3, 240, 240) model input of the i-th file.
"""

import sys

import numpy as np


def main() -> None:
    from anomalib.data.utils import read_image
    from anomalib.models.image.winclip.lightning_model import WinClip

    out, paths = sys.argv[1], sys.argv[2:]
    transform = WinClip.configure_pre_processor().transform
    arrays = {}
    for i, path in enumerate(paths):
        image = read_image(path, as_tensor=True)  # float32 in [0, 1], (3, H, W)
        arrays[f"image_{i}"] = transform(image.unsqueeze(0)).numpy()
    np.savez(out, **arrays)


if __name__ == "__main__":
    main()
