"""APRIL-GAN heads as artefacts: safetensors weights + a JSON sidecar, compatibility checks, the leakage
guard.

A heads file ``NAME.safetensors`` always travels with ``NAME.json``, which records what the heads only make
sense with (backbone architecture, weights, activation, input size, stages, prompt set) and what they were
trained on (dataset kind, root folder name, categories, regime, epochs, seed, metrics). The sidecar also holds
the sha256 of the weights file, so a swapped or corrupted file is detected.

Weights identity: a tag like ``openai`` and a local checkpoint of the same weights have different
``weights_id``s, so the sidecar also stores a *probe* — a few dozen parameter values of the vision tower
sampled at fixed positions. Heads load onto any backbone whose probe matches (hub tag or checkpoint, fp32 or
fp16), and are refused on different weights (e.g. random init vs OpenAI) with a clear hint.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from vlmad_runtime.errors import CheckpointMismatchError, VlmadError
from vlmad_runtime.fileio import atomic_save, atomic_write_text, sha256_file

HEADS_FORMAT = "vlmad-aprilgan-heads"
FORMAT_VERSION = 1
PROBE_PER_TENSOR = 8
PROBE_RTOL = 2e-2
PROBE_ATOL = 1e-3
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SIDECAR_HINT = (
    "use the sidecar written together with the weights by `vlmad train aprilgan` (or re-save the heads); "
    "a hand-edited sidecar is not trusted"
)
#: the MLP activation the released VAND-APRIL-GAN heads were trained behind (the reference builds ViT-L-14-336
#: at 518 px without QuickGELU)
REFERENCE_ACTIVATION = "GELU"


class DataLeakageError(VlmadError):
    """Heads trained on a category's images would be evaluated on that category as if zero-shot."""


class HeadsFileError(VlmadError):
    """A heads file or its sidecar is missing, unreadable or inconsistent."""


# ---------------------------------------------------------------------------------------------- paths
def heads_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights .safetensors, sidecar .json) for either of the two paths (or the stem)."""
    p = Path(path).expanduser()
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _sha256(path: Path) -> str:
    return sha256_file(path)


def _vlmad_version() -> str:
    from vlmad_runtime.version import __version__

    return __version__


# --------------------------------------------------------------------------------------- backbone identity
def weights_probe(backbone) -> list[float]:
    """Vision-tower parameter values at fixed positions (independent of input size and weights source)."""
    v = backbone.visual
    tensors = [
        v.conv1.weight,
        v.class_embedding,
        v.transformer.resblocks[0].attn.in_proj_weight,
        v.transformer.resblocks[-1].mlp.c_proj.weight,
    ]
    if v.proj is not None:
        tensors.append(v.proj)
    out: list[float] = []
    for t in tensors:
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, PROBE_PER_TENSOR).round().long().to(flat.device)
        out.extend(float(x) for x in flat[idx].float().cpu())
    return out


def backbone_meta(backbone) -> dict[str, Any]:
    """What heads depend on: architecture, weights, activation, input size, dims, stages."""
    from vlmad.methods.heads import backbone_activation

    src = backbone.source
    pretrained = None
    if src.kind == "pretrained" and "/" in src.weights_id:
        pretrained = src.weights_id.split("/", 1)[1]
    return {
        "arch": backbone.arch,
        "weights_kind": src.kind,
        "weights_id": src.weights_id,
        "pretrained": pretrained,
        "activation": backbone_activation(backbone),
        "image_size": int(backbone.image_size),
        "patch_size": int(backbone.patch_size),
        "grid": list(backbone.grid_size),
        "width": int(backbone.width),
        "embed_dim": int(backbone.embed_dim),
        "num_layers": int(backbone.num_layers),
        "precision": backbone.precision,
        "weights_probe": weights_probe(backbone),
    }


def check_compatible(
    meta: Mapping[str, Any],
    backbone,
    check_weights: bool = True,
    what: str = "APRIL-GAN heads",
    retrain: str = "vlmad train aprilgan",
) -> None:
    """Raise :class:`CheckpointMismatchError` when an artefact trained per ``meta`` does not fit ``backbone``.

    ``what`` names the artefact and ``retrain`` the command that trains it, so the hint fits every method that
    stores a trained artefact with this sidecar.
    """
    bb = meta.get("backbone", {})
    hint_bb = (
        f"use the backbone the {what} were trained on ({bb.get('arch')} at {bb.get('image_size')} px"
        f"{', ' + bb['pretrained'] if bb.get('pretrained') else ''}): leave out --model and the options are taken "
        f"from the file, or train them for this backbone with `{retrain}`"
    )
    problems = []
    if bb.get("arch") != backbone.arch:
        problems.append(f"architecture {bb.get('arch')} vs {backbone.arch}")
    if int(bb.get("image_size", -1)) != backbone.image_size:
        problems.append(f"input size {bb.get('image_size')} vs {backbone.image_size} px")
    if (bb.get("width"), bb.get("embed_dim")) != (backbone.width, backbone.embed_dim):
        problems.append(f"dims {bb.get('width')}->{bb.get('embed_dim')} vs {backbone.width}->{backbone.embed_dim}")
    stages = [int(s) for s in meta.get("stages", [])]
    if any(not 1 <= s <= backbone.num_layers for s in stages):
        problems.append(f"stages {stages} vs {backbone.num_layers} blocks")
    if problems:
        raise CheckpointMismatchError(f"{what} do not fit this backbone: " + "; ".join(problems), hint_bb)
    from vlmad.methods.heads import backbone_activation

    act = backbone_activation(backbone)
    if bb.get("activation") and bb["activation"] != act:
        quick = bb["activation"] == "QuickGELU"
        raise CheckpointMismatchError(
            f"{what} were trained with {bb['activation']} activations but the backbone uses {act}",
            f"pass quick_gelu={quick} (CLI: --{'' if quick else 'no-'}quick-gelu) to match the heads",
        )
    if check_weights and bb.get("weights_probe") is not None:
        want = torch.tensor(bb["weights_probe"], dtype=torch.float64)
        have = torch.tensor(weights_probe(backbone), dtype=torch.float64)
        if want.shape != have.shape or not torch.allclose(have, want, rtol=PROBE_RTOL, atol=PROBE_ATOL):
            raise CheckpointMismatchError(
                f"{what} were trained on backbone weights {bb.get('weights_id')!r}, which differ "
                f"from the loaded weights {backbone.source.weights_id!r}",
                "load the same weights (hub tag or a checkpoint of them); check_weights=False skips this "
                "check (results are then meaningless unless the weights are equivalent)",
            )


# ---------------------------------------------------------------------------------------------- save / load
def save_heads(heads, path: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically; returns the weights path.

    ``meta`` must hold at least ``backbone`` (see :func:`backbone_meta`) and ``stages``; ``format``, the
    weights' sha256, the parameter count, the vlmad version and a timestamp are added here.
    """
    from safetensors.torch import save_file

    weights, sidecar = heads_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in heads.state_dict().items()}
    file_meta = {"format": HEADS_FORMAT, "format_version": str(FORMAT_VERSION)}
    atomic_save(weights, lambda tmp: save_file(state, str(tmp), metadata=file_meta))
    full = {
        "format": HEADS_FORMAT,
        "format_version": FORMAT_VERSION,
        **dict(meta),
        "n_parameters": int(sum(v.numel() for v in state.values())),
        "sha256": _sha256(weights),
        "vlmad_version": _vlmad_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(sidecar, json.dumps(full, indent=2, sort_keys=False) + "\n")
    return weights


def read_heads_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar of a heads file, validated (format, version, the fields loading relies on; see
    :func:`validate_sidecar`)."""
    weights, sidecar = heads_paths(path)
    if not sidecar.exists():
        raise HeadsFileError(
            f"heads sidecar {sidecar} not found" + ("" if weights.exists() else f" (nor {weights})"),
            "heads are written by `vlmad train aprilgan` as NAME.safetensors + NAME.json; keep both files "
            "together (reference .pth checkpoints: convert with vlmad.training.import_reference_heads)",
        )
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HeadsFileError(f"cannot read heads sidecar {sidecar}: {err}", "re-save the heads") from err
    if not isinstance(meta, dict) or meta.get("format") != HEADS_FORMAT:
        raise HeadsFileError(f"{sidecar} is not an APRIL-GAN heads sidecar (format {HEADS_FORMAT!r})")
    validate_sidecar(meta, sidecar)
    return meta


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_probe(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value
    )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


#: (field, check, what it must be); required fields first in each table. Loading, compatibility checks and the
#: leakage guard read exactly these, so a malformed value is reported here instead of as a traceback there.
_REQUIRED = (
    ("format_version", _is_count, "a positive integer"),
    (
        "sha256",
        lambda v: isinstance(v, str) and _SHA256_RE.fullmatch(v) is not None,
        "the 64 lower-case hex digits of the weights file's sha256",
    ),
    (
        "stages",
        lambda v: isinstance(v, list) and bool(v) and all(_is_count(x) for x in v),
        "a non-empty list of transformer block numbers (integers >= 1)",
    ),
    ("backbone", lambda v: isinstance(v, dict), "an object describing the backbone the heads were trained on"),
)
_REQUIRED_BACKBONE = (
    ("arch", _is_name, "the architecture name"),
    ("image_size", _is_count, "the input size in pixels (integer >= 1)"),
    ("width", _is_count, "the vision width (integer >= 1)"),
    ("embed_dim", _is_count, "the embedding width (integer >= 1)"),
)
_OPTIONAL_FIELDS = (
    ("prompt_set", _optional(_is_name), "a prompt-set name"),
    ("class_name_style", _optional(lambda v: v in ("display", "raw")), "'display' or 'raw'"),
    ("training", _optional(lambda v: isinstance(v, dict)), "an object (or null)"),
)
_OPTIONAL_BACKBONE = (
    ("activation", _optional(_is_name), "an activation name such as 'GELU' or 'QuickGELU' (or null)"),
    ("weights_probe", _optional(_is_probe), "a list of finite numbers (or null)"),
    ("weights_id", _optional(_is_name), "a weights identifier (or null)"),
    ("pretrained", _optional(_is_name), "a pretrained tag (or null)"),
    ("num_layers", _optional(_is_count), "the number of transformer blocks (integer >= 1)"),
)


def _check_fields(obj: Mapping[str, Any], table, required: bool, where: str, sidecar: Path) -> None:
    for key, check, what in table:
        if key not in obj:
            if required:
                raise HeadsFileError(f"heads sidecar {sidecar} lacks {where}{key!r} ({what})", _SIDECAR_HINT)
            continue
        if not check(obj[key]):
            shown = json.dumps(obj[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise HeadsFileError(f"heads sidecar {sidecar}: {where}{key!r} must be {what}, got {shown}", _SIDECAR_HINT)


def validate_sidecar(meta: Mapping[str, Any], sidecar: Path) -> None:
    """Raise :class:`HeadsFileError` naming the field when the sidecar is not one vlmad can trust.

    The sha256 is mandatory: without it a modified weights file would load silently, so a sidecar that lost it
    is refused rather than trusted.
    """
    _check_fields(meta, _REQUIRED, True, "", sidecar)
    if meta["format_version"] > FORMAT_VERSION:
        raise HeadsFileError(
            f"{sidecar} has format version {meta['format_version']}, newer than this vlmad supports ({FORMAT_VERSION})",
            "upgrade vlmad",
        )
    _check_fields(meta, _OPTIONAL_FIELDS, False, "", sidecar)
    _check_fields(meta["backbone"], _REQUIRED_BACKBONE, True, "backbone.", sidecar)
    _check_fields(meta["backbone"], _OPTIONAL_BACKBONE, False, "backbone.", sidecar)
    data = (meta.get("training") or {}).get("data")
    if data is not None:
        ok = isinstance(data, dict) and all(
            isinstance(data.get(k), str) for k in ("kind", "regime", "root_name") if data.get(k) is not None
        )
        cats = data.get("categories") if isinstance(data, dict) else None
        if not ok or (cats is not None and not (isinstance(cats, list) and all(_is_name(c) for c in cats))):
            raise HeadsFileError(
                f"heads sidecar {sidecar}: 'training.data' must be an object with string kind/regime/root_name "
                "and a list of category names",
                _SIDECAR_HINT,
            )


def load_heads(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, sidecar) of a heads file; the weights must match the sidecar's sha256 and shapes."""
    from safetensors.torch import load_file

    weights, sidecar = heads_paths(path)
    meta = read_heads_meta(path)
    if not weights.exists():
        raise HeadsFileError(
            f"heads weights {weights} not found (sidecar {sidecar} exists)",
            "keep NAME.safetensors next to NAME.json",
        )
    sha = _sha256(weights)
    if meta["sha256"] != sha:  # mandatory, checked by read_heads_meta
        raise HeadsFileError(
            f"heads weights {weights} do not match their sidecar (sha256 {sha[:12]} vs {str(meta['sha256'])[:12]})",
            "the file was modified or the pair was mixed up; use the files written together by training",
        )
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise HeadsFileError(f"cannot read heads weights {weights}: {err}") from err
    bb = meta["backbone"]
    n = len(meta["stages"])
    expected = {}
    for i in range(n):
        expected[f"heads.{i}.weight"] = (int(bb["embed_dim"]), int(bb["width"]))
        expected[f"heads.{i}.bias"] = (int(bb["embed_dim"]),)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise HeadsFileError(
            f"heads weights {weights} do not have the shapes its sidecar describes",
            "the file was modified or the pair was mixed up",
        )
    return state, meta


def import_reference_heads(
    pth: str | Path,
    out: str | Path,
    backbone,
    stages=(6, 12, 18, 24),
    trained_on: Mapping[str, Any] | None = None,
    prompt_set: str = "aprilgan",
    trained_activation: str = REFERENCE_ACTIVATION,
) -> Path:
    """Convert a VAND-APRIL-GAN checkpoint (``{'trainable_linearlayer': {'fc.i.weight', ...}}``) to vlmad
    heads.

    ``backbone`` is the vlmad backbone the reference ran (ViT-L-14-336 at 518 px with the OpenAI weights, built
    *without* QuickGELU as the reference does at 518 px: vlmad's APRIL-GAN default). ``trained_activation``:
    the MLP activation the heads were trained behind ("GELU" for the released checkpoints); a backbone with
    another one is refused (the heads would see other features: maps off by ~0.15 on the same weights), so
    the sidecar can never record an activation the heads were not trained with.
    ``trained_on``: e.g. ``{"kind": "visa", "root_name": "visa", "categories": [...], "regime":
    "cross-dataset"}`` (the reference's visa_pretrained.pth was trained on VisA's test split,
    mvtec_pretrained.pth on MVTec AD's).
    """
    from vlmad.methods.heads import ProjectionHeads, backbone_activation

    act = backbone_activation(backbone)
    if act != trained_activation:
        quick = trained_activation == "QuickGELU"
        raise CheckpointMismatchError(
            f"reference heads {Path(pth).name} were trained behind {trained_activation} activations but the "
            f"backbone uses {act}",
            f"load the backbone with quick_gelu={quick} (CLI: --{'' if quick else 'no-'}quick-gelu), as the "
            "reference did; pass trained_activation only if the heads were trained otherwise",
        )
    try:
        obj = torch.load(str(pth), map_location="cpu", weights_only=True)
    except Exception as err:
        raise HeadsFileError(f"cannot read reference checkpoint {pth}: {err}") from err
    sd = obj.get("trainable_linearlayer", obj) if isinstance(obj, dict) else obj
    state = {k.replace("fc.", "heads.", 1): v for k, v in sd.items()}
    heads = ProjectionHeads(backbone.width, backbone.embed_dim, len(stages))
    try:
        heads.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointMismatchError(f"reference checkpoint {pth} does not fit {backbone.arch}: {err}") from err
    data = dict(trained_on or {})
    meta = {
        "backbone": backbone_meta(backbone),
        "stages": [int(s) for s in stages],
        "prompt_set": prompt_set,
        "class_name_style": "raw",
        "training": {"data": data or None, "source": f"imported from {Path(pth).name} (VAND-APRIL-GAN)"},
    }
    return save_heads(heads, out, meta)


# ---------------------------------------------------------------------------------------------- leakage guard
def check_leakage(
    heads_meta: Mapping[str, Any] | str | Path | None,
    dataset_name: str,
    category: str,
    force: bool = False,
    dataset_root: str | Path | None = None,
    artefact: str = "APRIL-GAN heads",
) -> str | None:
    """Refuse to call an evaluation "zero-shot" when the heads were trained on images of that category.

    ``heads_meta``: a sidecar dict (``detector.heads_meta``) or a heads path; None (untrained heads) is clean.
    Same dataset = same kind (``dataset_name``: "mvtec", "visa", "folder"); for "folder" datasets the root
    folder names must also agree when both are known. A category counts as seen when it is in the training
    categories — in the cross-dataset regime its test images (with masks) were the training data, in the
    synthetic regime its normal train images were.

    Returns None when clean. When leaky: raises :class:`DataLeakageError`, or with ``force=True`` returns a
    label (e.g. ``"not-zero-shot: heads trained on mvtec/bottle test images"``) that must be stored with the
    result.
    """
    if heads_meta is None:
        return None
    meta = read_heads_meta(heads_meta) if isinstance(heads_meta, (str, Path)) else heads_meta
    training = meta.get("training") or {}
    data = training.get("data") or {}
    if not data:
        return None
    kind = str(data.get("kind", "")).lower()
    if kind != str(dataset_name).lower():
        return None
    root_name = data.get("root_name")
    if kind == "folder" and root_name and dataset_root is not None and Path(dataset_root).name != root_name:
        return None
    categories = data.get("categories") or []
    if category not in categories:
        return None
    regime = data.get("regime", "cross-dataset")
    what = "normal train images" if regime == "synthetic" else "test images (with masks)"
    label = f"not-zero-shot: heads trained on {kind}/{category} {what}"
    if force:
        return label
    raise DataLeakageError(
        f"the {artefact} were trained on {kind} category {category!r} ({what}, regime {regime}); "
        f"evaluating them on {dataset_name}/{category} is not zero-shot",
        "use heads trained on another dataset (the paper trains on VisA to test MVTec AD and vice versa), or "
        "force the run (force=True); the result must then carry the label: " + label,
    )
