"""AnomalyCLIP's learned prompts as artefacts: safetensors weights + JSON sidecar, like APRIL-GAN's heads.

The file pair, the sha256 (mandatory), the backbone description with its weights probe, the compatibility check
and the leakage guard are the heads machinery of :mod:`vlmad.training.heads_io`, reused here; only the format
name, the tensor layout (``ctx_normal``, ``ctx_anomalous`` (n_ctx, W), ``deep`` (depth - 1, t_n_ctx, W)) and the
prompt shape in the sidecar are this module's. ``import_reference_prompts`` converts the official checkpoint
(zqhang/AnomalyCLIP: ``torch.save({"prompt_learner": state_dict})``) into that artefact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlmad.training.heads_io import (
    _OPTIONAL_BACKBONE,
    _REQUIRED,
    _REQUIRED_BACKBONE,
    HeadsFileError,
    _check_fields,
    _vlmad_version,
    backbone_meta,
    check_compatible,
    heads_paths,
)
from vlmad_runtime.errors import CheckpointMismatchError
from vlmad_runtime.fileio import atomic_save, atomic_write_text, sha256_file

PROMPTS_FORMAT = "vlmad-anomalyclip-prompts"
FORMAT_VERSION = 1
_SHAPE_KEYS = ("n_ctx", "depth", "t_n_ctx")
_HINT = "use the sidecar written together with the weights (or re-save the prompts); a hand-edited one is not trusted"


def save_prompts(prompts, path: str | Path, backbone, training: Mapping[str, Any] | None = None) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically; returns the weights path."""
    from safetensors.torch import save_file

    weights, sidecar = heads_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in prompts.state_dict().items()}
    atomic_save(weights, lambda tmp: save_file(state, str(tmp), metadata={"format": PROMPTS_FORMAT}))
    meta = {
        "format": PROMPTS_FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone_meta(backbone),
        "prompt_shape": {"n_ctx": prompts.n_ctx, "depth": prompts.depth, "t_n_ctx": prompts.t_n_ctx},
        "training": dict(training) if training else None,
        "n_parameters": int(sum(v.numel() for v in state.values())),
        "sha256": sha256_file(weights),
        "vlmad_version": _vlmad_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(sidecar, json.dumps(meta, indent=2) + "\n")
    return weights


def read_prompts_meta(path: str | Path) -> dict[str, Any]:
    """The validated sidecar of a prompts file (format, sha256, backbone fields, prompt shape)."""
    weights, sidecar = heads_paths(path)
    if not sidecar.exists():
        raise HeadsFileError(f"prompts sidecar {sidecar} not found", "keep NAME.safetensors and NAME.json together")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HeadsFileError(f"cannot read prompts sidecar {sidecar}: {err}", _HINT) from err
    if not isinstance(meta, dict) or meta.get("format") != PROMPTS_FORMAT:
        raise HeadsFileError(f"{sidecar} is not an AnomalyCLIP prompts sidecar (format {PROMPTS_FORMAT!r})")
    _check_fields(meta, [r for r in _REQUIRED if r[0] != "stages"], True, "", sidecar)
    _check_fields(meta["backbone"], _REQUIRED_BACKBONE, True, "backbone.", sidecar)
    _check_fields(meta["backbone"], _OPTIONAL_BACKBONE, False, "backbone.", sidecar)
    shape = meta.get("prompt_shape")
    if not isinstance(shape, dict) or not all(isinstance(shape.get(k), int) and shape[k] >= 0 for k in _SHAPE_KEYS):
        raise HeadsFileError(f"prompts sidecar {sidecar}: 'prompt_shape' must hold integer {_SHAPE_KEYS}", _HINT)
    if meta["format_version"] > FORMAT_VERSION:
        raise HeadsFileError(
            f"{sidecar} has format version {meta['format_version']}, newer than this vlmad's", "upgrade vlmad"
        )
    return meta


def load_prompts(path: str | Path, backbone=None, check_weights: bool = True):
    """(ObjectAgnosticPrompts, sidecar); the weights must match the sidecar's sha256 and prompt shape, and the
    backbone (when given) the one the prompts were learned on."""
    from safetensors.torch import load_file

    from vlmad.methods.prompt_learner import ObjectAgnosticPrompts

    weights, sidecar = heads_paths(path)
    meta = read_prompts_meta(path)
    if not weights.exists():
        raise HeadsFileError(
            f"prompts weights {weights} not found (sidecar {sidecar} exists)", "keep NAME.safetensors next to NAME.json"
        )
    sha = sha256_file(weights)
    if sha != meta["sha256"]:
        raise HeadsFileError(
            f"prompts weights {weights} do not match their sidecar (sha256 {sha[:12]} vs {meta['sha256'][:12]})",
            "the file was modified or the pair was mixed up",
        )
    if backbone is not None:
        check_compatible(
            meta, backbone, check_weights=check_weights, what="AnomalyCLIP prompts", retrain="vlmad train anomalyclip"
        )
    shape = meta["prompt_shape"]
    module = ObjectAgnosticPrompts(_text_width(meta, load_file(str(weights))), **{k: shape[k] for k in _SHAPE_KEYS})
    try:
        module.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as err:
        raise HeadsFileError(
            f"prompts weights {weights} do not have the shapes its sidecar describes: {err}",
            "the file was modified or the pair was mixed up",
        ) from err
    return module, meta


def _text_width(meta: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> int:
    ctx = state.get("ctx_normal")
    if ctx is None or ctx.ndim != 2:
        raise HeadsFileError("prompts weights lack a (n_ctx, width) 'ctx_normal' tensor", _HINT)
    return int(ctx.shape[1])


def reference_state_to_prompts(state: Mapping[str, torch.Tensor]):
    """The official prompt learner's state dict -> :class:`ObjectAgnosticPrompts` (its unused
    ``compound_prompt_projections`` and token buffers are dropped)."""
    from vlmad.methods.prompt_learner import ObjectAgnosticPrompts

    try:
        pos, neg = state["ctx_pos"], state["ctx_neg"]
        deep = [state[f"compound_prompts_text.{i}"] for i in range(len(state)) if f"compound_prompts_text.{i}" in state]
    except KeyError as err:
        raise CheckpointMismatchError(
            f"not an AnomalyCLIP prompt learner state dict: no {err}",
            "pass the 'prompt_learner' entry of the official checkpoint",
        ) from err
    pos, neg = pos.reshape(-1, pos.shape[-1]), neg.reshape(-1, neg.shape[-1])
    t_n_ctx = int(deep[0].shape[0]) if deep else 0
    module = ObjectAgnosticPrompts(int(pos.shape[-1]), n_ctx=int(pos.shape[0]), depth=len(deep) + 1, t_n_ctx=t_n_ctx)
    with torch.no_grad():
        module.ctx_normal.copy_(pos)
        module.ctx_anomalous.copy_(neg)
        if deep:
            module.deep.copy_(torch.stack(deep))
    return module


def import_reference_prompts(
    pth: str | Path, out: str | Path, backbone, trained_on: Mapping[str, Any] | None = None
) -> Path:
    """Convert an official AnomalyCLIP checkpoint (``{"prompt_learner": state_dict}``) into a vlmad prompts file.

    ``trained_on``: e.g. ``{"kind": "visa", "categories": [...], "regime": "cross-dataset"}`` (the released
    checkpoints were trained on MVTec AD's or VisA's test split), kept for the leakage guard.
    """
    try:
        obj = torch.load(str(pth), map_location="cpu", weights_only=True)
    except Exception as err:
        raise HeadsFileError(f"cannot read reference checkpoint {pth}: {err}") from err
    state = obj.get("prompt_learner", obj) if isinstance(obj, dict) else obj
    module = reference_state_to_prompts(state)
    width = int(backbone.model.token_embedding.weight.shape[1])
    if module.ctx_normal.shape[1] != width:
        raise CheckpointMismatchError(
            f"{Path(pth).name} holds {module.ctx_normal.shape[1]}-wide prompts but "
            f"{backbone.arch}'s text tower is {width} wide",
            "load ViT-L-14-336",
        )
    training = {
        "data": dict(trained_on) if trained_on else None,
        "source": f"imported from {Path(pth).name} (zqhang/AnomalyCLIP)",
    }
    return save_prompts(module, out, backbone, training)
