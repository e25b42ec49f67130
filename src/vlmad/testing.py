"""Helpers for tests and benchmarks that cannot download real CLIP weights.

Random-init CLIP is nearly isotropic: every window and every prompt embeds to almost the same vector, so maps are
flat and a parity test would compare constants. :func:`discriminative_state_dict` sharpens a random model
(bigger patch/token embeddings, sharper attention) so that outputs vary across images, windows and prompts, which
makes parity comparisons meaningful.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def discriminative_state_dict(
    arch: str, seed: int = 0, embed_gain: float = 8.0, qk_gain: float = 3.0, image_size: int | None = None
) -> dict[str, torch.Tensor]:
    """Random weights of ``arch`` with amplified embeddings and attention logits (deterministic in ``seed``)."""
    from vlmad.backbones.loading import _build_skeleton, register_tiny_configs

    register_tiny_configs()
    torch.manual_seed(seed)
    model = _build_skeleton(arch, False, image_size, "cpu")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key in list(sd):
        if key.endswith("conv1.weight") or key == "token_embedding.weight":
            sd[key] *= embed_gain
        elif key.endswith("positional_embedding"):
            sd[key] *= embed_gain / 2
        elif key.endswith("attn.in_proj_weight"):
            d = sd[key].shape[1]
            sd[key][: 2 * d] *= qk_gain  # queries and keys
    return {k: v.contiguous() for k, v in sd.items()}


def save_state_dict(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random RGB images in [0,1] with a bright square on odd indices, (n, 3, size, size)."""
    rng = np.random.default_rng(seed)
    low = rng.random((n, 3, 4, 4)).astype(np.float32)
    imgs = torch.nn.functional.interpolate(torch.from_numpy(low), size=(size, size), mode="bilinear")
    imgs = imgs + 0.05 * torch.from_numpy(rng.standard_normal((n, 3, size, size)).astype(np.float32))
    for i in range(1, n, 2):
        s = size // 4
        y, x = rng.integers(0, size - s, 2)
        imgs[i, :, y : y + s, x : x + s] = 1.0
    return imgs.clamp(0, 1)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """One intra-op torch thread, restored afterwards: on small shared machines tiny models run several times
    faster than with threads spinning against other jobs (used by the harness/study/report test packages)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
