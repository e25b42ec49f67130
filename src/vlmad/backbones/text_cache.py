"""On-disk cache of prompt embeddings.

Embedding a 231-prompt ensemble costs seconds on CPU and is the same every time for the same weights and prompts,
so it is stored once, keyed by the backbone fingerprint (architecture, weights, precision, activation) and the
exact ordered prompt list. Writes are atomic (temp file + rename) so a crash never leaves a half file behind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from vlmad.backbones.loading import cache_dir
from vlmad_runtime.fileio import atomic_save

CACHE_VERSION = "1"


def cache_key(fingerprint: str, prompts: Sequence[str]) -> str:
    payload = json.dumps({"v": CACHE_VERSION, "backbone": fingerprint, "prompts": list(prompts)})
    return hashlib.sha256(payload.encode()).hexdigest()


class TextEmbeddingCache:
    """safetensors files under ``<cache_dir>/text``; ``enabled=False`` bypasses it (``--no-cache``)."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "text"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, fingerprint: str, prompts: Sequence[str]) -> torch.Tensor | None:
        if not self.enabled:
            return None
        path = self.path_for(cache_key(fingerprint, prompts))
        if not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                emb = fh.get_tensor("embeddings")
        except Exception:
            return None  # a corrupt entry is a miss, recomputed and overwritten
        return emb if emb.shape[0] == len(prompts) else None

    def put(self, fingerprint: str, prompts: Sequence[str], embeddings: torch.Tensor) -> None:
        if not self.enabled:
            return
        from safetensors.torch import save_file

        path = self.path_for(cache_key(fingerprint, prompts))
        tensors = {"embeddings": embeddings.detach().float().cpu().contiguous()}
        meta = {"backbone": fingerprint, "n_prompts": str(len(prompts))}
        try:
            atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), durable=False)
        except OSError:
            pass  # an unwritable cache only costs recomputation

    def embed(self, backbone, prompts: Sequence[str]) -> torch.Tensor:
        """Cached ``backbone.encode_text(prompts)`` -> (N, E) float32 on the backbone's device."""
        fp = backbone.fingerprint
        emb = self.get(fp, prompts)
        if emb is not None:
            self.hits += 1
            return emb.to(backbone.device)
        self.misses += 1
        emb = backbone.encode_text(prompts)
        self.put(fp, prompts, emb)
        return emb
