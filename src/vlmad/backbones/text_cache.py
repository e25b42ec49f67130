"""On-disk cache of prompt embeddings.

Embedding a 231-prompt ensemble costs seconds on CPU and is the same every time for the same weights and prompts,
so it is stored once, keyed by the backbone fingerprint (architecture, weights, precision, activation) and the
exact ordered prompt list. Writes are atomic (temp file + rename) so a crash never leaves a half file behind.

The cache only ever saves time, so it never stops a run: an entry that is unreadable or not a finite float matrix
of the expected shape is a miss (recomputed and overwritten), and a cache directory that cannot be written (read-only
mount, foreign owner) is reported once per directory and the run continues uncached.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from vlmad.backbones.loading import cache_dir
from vlmad_runtime.fileio import atomic_save

CACHE_VERSION = "1"

_WARNED_ROOTS: set[Path] = set()  # directories already reported as unwritable in this process
_WARN_LOCK = threading.Lock()


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
        self.writable = True  # False after a failed write: the rest of the run goes uncached

    def path_for(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, fingerprint: str, prompts: Sequence[str], width: int | None = None) -> torch.Tensor | None:
        """The cached ``(len(prompts), width)`` embeddings, or None (a miss) for a missing or invalid entry."""
        if not self.enabled:
            return None
        path = self.path_for(cache_key(fingerprint, prompts))
        from safetensors import safe_open

        try:
            if not path.is_file():  # inside the try: stat() on an unreadable directory raises
                return None
            with safe_open(str(path), framework="pt") as fh:
                emb = fh.get_tensor("embeddings")
        except Exception:
            return None  # a corrupt entry is a miss, recomputed and overwritten
        return emb if _valid_entry(emb, len(prompts), width) else None

    def put(self, fingerprint: str, prompts: Sequence[str], embeddings: torch.Tensor) -> None:
        """Store embeddings; a failed write (unwritable directory, full disk) warns once and is otherwise ignored."""
        if not self.enabled or not self.writable:
            return
        from safetensors.torch import save_file

        path = self.path_for(cache_key(fingerprint, prompts))
        tensors = {"embeddings": embeddings.detach().float().cpu().contiguous()}
        meta = {"backbone": fingerprint, "n_prompts": str(len(prompts))}
        try:
            atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), durable=False)
        except Exception as err:  # OSError, and safetensors' SafetensorError (not an OSError) from the writer
            self.writable = False
            _warn_unwritable(self.root, err)

    def embed(self, backbone, prompts: Sequence[str]) -> torch.Tensor:
        """Cached ``backbone.encode_text(prompts)`` -> (N, E) float32 on the backbone's device."""
        fp = backbone.fingerprint
        emb = self.get(fp, prompts, width=getattr(backbone, "embed_dim", None))
        if emb is not None:
            self.hits += 1
            return emb.to(backbone.device)
        self.misses += 1
        emb = backbone.encode_text(prompts)
        self.put(fp, prompts, emb)
        return emb


def _valid_entry(emb: torch.Tensor, n_prompts: int, width: int | None) -> bool:
    """A usable entry is a finite float matrix with one row per prompt (and the backbone's width when known):
    anything else (an entry from another model, a hand-edited or bit-rotted file) would crash or give NaN scores."""
    if emb.ndim != 2 or emb.shape[0] != n_prompts or not emb.is_floating_point():
        return False
    if width is not None and emb.shape[1] != width:
        return False
    return bool(torch.isfinite(emb).all())


def _warn_unwritable(root: Path, err: Exception) -> None:
    with _WARN_LOCK:
        if root in _WARNED_ROOTS:
            return
        _WARNED_ROOTS.add(root)
    warnings.warn(
        f"text-embedding cache {root} is not writable ({err}); continuing without caching. Fix its permissions, "
        "point VLMAD_CACHE_DIR at a writable directory, or pass --no-cache to silence this",
        stacklevel=3,
    )
