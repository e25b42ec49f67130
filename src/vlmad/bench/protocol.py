"""What makes a benchmark number what it claims to be: row keys, reference draws, test subsets, eval sizes.

Everything here is a pure function of the configuration and the dataset listing (no model is loaded), so the
runner can tell which rows of a grid are already finished before it builds a single detector.

Rules (documented for users in :mod:`vlmad.bench`):

* **Row key**: sha256 of the canonical JSON of the row's protocol (method + options, weights identity, dataset
  kind + resolved root + category, shots, seed, evaluation options, ``--limit``, tags). ``--force-protocol`` is
  not part of it: it re-runs only the rows a protocol check refused, and those rows are labelled as forced.
  Files passed as options (checkpoints, heads, prompt files) enter the key by content (sha256), so replacing a
  checkpoint recomputes its rows. Runtime choices that do not change the numbers (device, batch size, data
  workers, text cache) are not part of the key.
* **Few-shot references** come only from the train split (``train/good``): a seeded permutation
  (``numpy.random.default_rng(seed)``) of the sorted train list, first K images. Draws are nested (the 1-shot
  reference of seed s is the first of its 2-shot references), which makes shot curves less noisy. A reference
  that cannot be read is skipped and the next one of the permutation taken (recorded in the row).
* **Zero-shot** is deterministic: it runs once per (method, category) with ``seed = None``, whatever ``--seeds``
  says (the seeds only drive the reference draw).
* **--limit N** keeps N test images per category, deterministically and balanced: ``N // 2`` anomalous (taken
  round-robin over the defect types, each in file-name order) and the rest normal (first in file-name order);
  when one kind runs short the other fills up.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmad.data.sample import Sample
from vlmad.methods.spec import BACKBONE_KEYS as _SPEC_BACKBONE_KEYS
from vlmad_runtime.errors import VlmadError

#: bump when the meaning of a row changes (reference policy, metric set, ...): old rows are then recomputed
#: 2: APRIL-GAN's defaults became the reference's (no QuickGELU, raw class names), so a key made under 1 with
#: default options named another protocol
ROW_SCHEMA = 2
#: method options that change how fast a row runs, never its numbers: not part of the row key
RUNTIME_KEYS = frozenset({"device", "batch_size", "use_cache", "chunk_tokens"})
#: backbone options (the rest of a method spec's kwargs are method options)
BACKBONE_KEYS = frozenset(_SPEC_BACKBONE_KEYS)
REFERENCE_POLICY = "numpy default_rng(seed).permutation(sorted train split)[:K], unreadable files skipped"
LIMIT_POLICY = "N//2 anomalous (round-robin over defect types) + rest normal, file-name order"
ZERO_SHOT_NOTE = "zero-shot is deterministic: run once per (method, category), seeds do not apply"
AUPRO_CHOICES = ("exact", "legacy200", "both")


# ---------------------------------------------------------------------------------------------------------------
# canonical JSON and keys


def canonical(obj: Any) -> Any:
    """JSON-ready, order-independent form (paths -> str, tuples -> lists, sets sorted, floats finite)."""
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(canonical(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else str(value)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def hash_key(payload: Mapping[str, Any], length: int = 16) -> str:
    text = json.dumps(canonical(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _file_identity(path: Path) -> dict[str, str]:
    from vlmad.backbones.loading import file_fingerprint

    return {"file": path.name, "sha256": file_fingerprint(path)}


def keyed_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Method kwargs as they enter the row key: runtime keys dropped, existing files replaced by their content
    hash (so the key survives moving the file and changes when the file changes)."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in RUNTIME_KEYS:
            continue
        if isinstance(value, (str, Path)) and str(value) and _looks_like_file(value):
            out[key] = _file_identity(Path(value).expanduser())
        else:
            out[key] = value
    return canonical(out)


def _looks_like_file(value: str | Path) -> bool:
    try:
        return Path(value).expanduser().is_file()
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------------------
# weights identity (for published-number matching; no model needed)


def weights_identity(method: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Which weights a spec asks for: ``{"source", "model", "tag", "tag_from"}``.

    ``tag`` is the open_clip pretrained tag when known: given with ``--pretrained``, the method's default (no
    weights option and the default model), or declared in a safetensors checkpoint's metadata as written by
    ``vlmad fetch-weights``.
    """
    from vlmad.methods.registry import get_spec

    spec = get_spec(method)
    defaults = {"model": spec.default_model, "pretrained": spec.default_pretrained}
    model = kwargs.get("model") or defaults.get("model")
    if kwargs.get("random_weights"):
        return {"source": "random", "model": model, "tag": None, "tag_from": None}
    if kwargs.get("checkpoint"):
        meta = checkpoint_metadata(kwargs["checkpoint"])
        return {
            "source": "checkpoint",
            "model": model,
            "tag": meta.get("pretrained"),
            "tag_from": "checkpoint metadata" if meta.get("pretrained") else None,
            "checkpoint_arch": meta.get("arch"),
        }
    if kwargs.get("pretrained"):
        return {"source": "pretrained", "model": model, "tag": kwargs["pretrained"], "tag_from": "option"}
    if model == defaults.get("model"):
        return {"source": "pretrained", "model": model, "tag": defaults.get("pretrained"), "tag_from": "default"}
    return {"source": "unspecified", "model": model, "tag": None, "tag_from": None}


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """safetensors header metadata (``vlmad fetch-weights`` stores arch + pretrained tag); {} otherwise."""
    p = Path(path).expanduser()
    if p.suffix != ".safetensors" or not p.is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:
        return {}


# ---------------------------------------------------------------------------------------------------------------
# the grid's samples


def select_references(train: Sequence[Sample], shots: int, seed: int) -> list[Sample]:
    """The seeded order in which references are drawn (caller takes the first ``shots`` readable ones).

    Only normal train-split samples are eligible; anything else is a programming error caught here.
    """
    bad = [s for s in train if s.split != "train" or s.is_anomalous]
    if bad:
        raise VlmadError(
            f"reference candidate {bad[0].image_path} is not a normal train-split image",
            "few-shot references are drawn from train/good only",
        )
    if shots > len(train):
        raise VlmadError(
            f"{shots}-shot needs {shots} normal train images but the split has {len(train)}",
            "lower --shots or add images to train/good",
        )
    order = np.random.default_rng(int(seed)).permutation(len(train))
    return [train[int(i)] for i in order]


def limit_samples(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """First ``limit`` test samples, balanced between normal and anomalous (see module docstring)."""
    if limit is None or limit >= len(samples):
        return list(samples)
    if limit < 1:
        raise VlmadError(f"--limit must be >= 1, got {limit}")
    normal = [s for s in samples if not s.is_anomalous]
    by_defect: dict[str, list[Sample]] = {}
    for s in samples:
        if s.is_anomalous:
            by_defect.setdefault(s.defect_type, []).append(s)
    anomalous: list[Sample] = []
    queues = [list(v) for _, v in sorted(by_defect.items())]
    while any(queues):
        for q in queues:
            if q:
                anomalous.append(q.pop(0))
    n_bad = min(len(anomalous), limit // 2)
    n_good = min(len(normal), limit - n_bad)
    n_bad = min(len(anomalous), limit - n_good)
    chosen = set(map(id, normal[:n_good] + anomalous[:n_bad]))
    return [s for s in samples if id(s) in chosen]  # keep the reader's order


def relpath(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------------
# evaluation resolution


def parse_eval_resolution(value: str | int) -> str | int:
    """ "input" (model input size, default), "original" (each image's size) or a side length N (square)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("input", "original"):
            return text
        try:
            n = int(text)
        except ValueError:
            raise VlmadError(
                f"unknown evaluation resolution {value!r}",
                "use 'input' (model input size), 'original' (image size) or a number of pixels",
            ) from None
    if n < 8:
        raise VlmadError(f"evaluation resolution {n} px is too small", "use at least 8 pixels")
    return n


def parse_aupro(value: str) -> tuple[str, ...]:
    if value not in AUPRO_CHOICES:
        raise VlmadError(f"unknown --aupro {value!r}", f"use one of {', '.join(AUPRO_CHOICES)}")
    return ("exact", "legacy200") if value == "both" else (value,)


def parse_int_list(text: str | Iterable[int], what: str, minimum: int = 0) -> list[int]:
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",") if t.strip()]
    else:
        items = list(text)
    out: list[int] = []
    for item in items:
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise VlmadError(f"{what}: {item!r} is not an integer", f"pass e.g. --{what} 0,1,2") from None
        if value < minimum:
            raise VlmadError(f"{what}: {value} is below {minimum}")
        if value not in out:
            out.append(value)
    if not out:
        raise VlmadError(f"{what}: no value given", f"pass e.g. --{what} 0,1")
    return out
