"""Turn (architecture, pretrained tag | checkpoint | random) into an open_clip model, failing fast and clearly.

Why not just ``open_clip.create_model(arch, pretrained=tag)``: it first random-initialises the whole model (seconds
of CPU for ViT-B-16+, and a second copy of every weight in memory while loading), and offline it retries the hub for
about a minute before failing with a generic message. Here the model skeleton is built on the ``meta`` device and
the weights are *assigned* from the file, so loading costs one copy and no init; offline, the error comes in
seconds and names ``--checkpoint``.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from vlmad_runtime.errors import CheckpointMismatchError, UnknownNameError, WeightsUnavailableError
from vlmad_runtime.fileio import atomic_write_text, sha256_file

CONFIG_DIR = Path(__file__).parent / "configs"
HUB_HOST = "huggingface.co"
_configs_registered = False


def register_tiny_configs() -> None:
    """Make vlmad's tiny test architectures (``vlmad-tiny-*``) known to open_clip."""
    global _configs_registered
    if not _configs_registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _configs_registered = True


def list_architectures() -> list[str]:
    import open_clip

    register_tiny_configs()
    return list(open_clip.list_models())


def list_pretrained(arch: str | None = None) -> list[tuple[str, str]]:
    import open_clip

    pairs = [tuple(p) for p in open_clip.list_pretrained()]
    return [p for p in pairs if arch is None or p[0] == arch]


def cache_dir() -> Path:
    """Where vlmad keeps text-embedding caches and checkpoint fingerprints."""
    env = os.environ.get("VLMAD_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vlmad"))


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights came from; ``weights_id`` is recorded with every result, ``fingerprint`` keys caches."""

    kind: str  # "pretrained" | "checkpoint" | "random"
    weights_id: str
    fingerprint: str

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


def hub_address() -> tuple[str, int]:
    """(host, port) of the hub the weights come from: ``HF_ENDPOINT`` when set (a mirror or a proxy, which
    huggingface_hub then downloads from), else huggingface.co:443."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    return endpoint.hostname or HUB_HOST, port


def hub_reachable(timeout: float = 3.0) -> bool:
    """Cheap TCP probe so that offline machines fail in seconds instead of after the hub's retries.

    ``HF_HUB_OFFLINE=1`` answers False without touching the network. The probe goes to :func:`hub_address`, so
    a machine that reaches the hub only through ``HF_ENDPOINT`` is not mistaken for an offline one."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(hub_address(), timeout=timeout):
            return True
    except OSError:
        return False


def file_fingerprint(path: Path) -> str:
    """sha256 of a checkpoint, memoised by (path, size, mtime) so a warm start does not re-read 800 MB."""
    path = path.resolve()
    st = path.stat()
    index_path = cache_dir() / "fingerprints.json"
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    value = sha256_file(path)
    index[key] = value
    try:
        atomic_write_text(index_path, json.dumps(index), durable=False)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return value


_CHECKPOINT_HINT = "use a safetensors file (preferred) or a plain torch state dict loadable with weights_only=True"


def sniff_checkpoint(path: Path) -> str:
    """What a checkpoint file holds, judged by its bytes, not its name: "safetensors", "torch" (zip archive or
    legacy pickle), "empty", "lfs-pointer" (a Git LFS stub checked out without ``git lfs pull``), "text" or "unknown".

    The loader is chosen by content, so a mislabelled file still loads and a text file (an LFS stub, an HTML
    error page saved by a failed download, a config passed by mistake) is named as such instead of failing
    inside a parser with an opaque message."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    size = path.stat().st_size
    if size == 0:
        return "empty"
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "torch"
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"version https://git-lfs"):
        return "lfs-pointer"
    try:  # incremental: a 4 KiB cut through a multi-byte character is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "unknown"
    return "text" if "\x00" not in text else "unknown"


def _not_weights_error(path: Path, kind: str) -> WeightsUnavailableError:
    if kind == "lfs-pointer":
        return WeightsUnavailableError(
            f"checkpoint {path} is a Git LFS pointer (a small text stub), not the weights",
            "fetch the real file with `git lfs pull` (or download it again), then pass that path",
        )
    if kind == "text":
        first = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[:1]
        shown = first[0][:60] if first else ""
        return WeightsUnavailableError(
            f"checkpoint {path} is a text file, not model weights (it starts with {shown!r})",
            "pass the .safetensors/.pt weights file itself; a text file here is often an HTML error page saved by "
            "a failed download (`vlmad fetch-weights` downloads weights properly)",
        )
    if kind == "empty":
        return WeightsUnavailableError(
            f"checkpoint {path} is empty (0 bytes)", "the download or copy was interrupted; fetch the weights again"
        )
    return WeightsUnavailableError(
        f"checkpoint {path} is neither a safetensors file nor a torch checkpoint", _CHECKPOINT_HINT
    )


def _describe(err: BaseException) -> str:
    """An exception as a readable phrase: a bare ``KeyError(101)`` would print as just ``101``."""
    text = str(err)
    return text if any(c.isalpha() for c in text) else f"{type(err).__name__}({text})"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict: safetensors (memory-mapped) or a torch pickle with ``weights_only=True``."""
    if not path.exists():
        raise WeightsUnavailableError(
            f"checkpoint {path} does not exist", "pass the path of a .safetensors (or .pt/.pth) state dict"
        )
    if path.is_dir():
        raise WeightsUnavailableError(f"checkpoint {path} is a directory", "pass the path of the weights file")
    try:
        kind = sniff_checkpoint(path)
    except OSError as err:
        raise WeightsUnavailableError(f"cannot read checkpoint {path}: {err}", "check the file's permissions") from err
    if kind not in ("safetensors", "torch"):
        raise _not_weights_error(path, kind)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            with open(path, "rb") as fh:  # a file object: torch.load must not guess the format from the name
                obj = torch.load(fh, map_location="cpu", weights_only=True)
            sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    except Exception as err:  # corrupt file, unsafe pickle, wrong format
        raise WeightsUnavailableError(
            f"cannot read checkpoint {path} ({kind}): {_describe(err)}", _CHECKPOINT_HINT
        ) from err
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsUnavailableError(f"checkpoint {path} is not a state dict of tensors", _CHECKPOINT_HINT)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


class _DropRandomInitNotice(logging.Filter):
    """open_clip warns "Model initialized randomly" when built without weights; vlmad assigns the weights right
    after (or says itself, louder, that they are random), so the notice would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _build_skeleton(arch: str, quick_gelu: bool, image_size: int | None, device: str) -> nn.Module:
    import open_clip

    kwargs = {"force_quick_gelu": quick_gelu}
    if image_size is not None:
        kwargs["force_image_size"] = image_size
    notice = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        with torch.device(device):
            return open_clip.create_model(arch, pretrained=None, device=device, **kwargs)
    finally:
        root.removeFilter(notice)


def _materialise_meta_buffers(model: nn.Module) -> None:
    """Non-persistent buffers are not in checkpoints; the only one open_clip has is the causal text mask."""
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if name == "attn_mask" and buf.ndim == 2 and buf.shape[0] == buf.shape[1]:
                mask = torch.full(tuple(buf.shape), float("-inf")).triu_(1)
                module._buffers[name] = mask
            else:
                raise RuntimeError(f"unexpected non-persistent buffer {name} left on the meta device")


def load_weights_into(
    model_arch: str, sd: dict[str, torch.Tensor], quick_gelu: bool, image_size: int | None, source: str
) -> nn.Module:
    """Build the architecture on ``meta`` and assign the state dict; mismatches become a clear error."""
    from open_clip.model import resize_pos_embed

    model = _build_skeleton(model_arch, quick_gelu, image_size, "meta")
    expected = model.state_dict()
    pos_key = "visual.positional_embedding"
    if pos_key in sd and pos_key in expected and sd[pos_key].shape != expected[pos_key].shape:
        # e.g. APRIL-GAN runs ViT-L-14-336 at 518 px: interpolate 24x24 -> 37x37 as open_clip does
        resize_pos_embed(sd, model)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong_shape = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong_shape:
            k = wrong_shape[0]
            detail.append(
                f"{len(wrong_shape)} shape mismatches (e.g. {k}: checkpoint {tuple(sd[k].shape)} vs "
                f"{model_arch} {tuple(expected[k].shape)})"
            )
        raise CheckpointMismatchError(
            f"checkpoint {source} does not fit architecture {model_arch}: " + "; ".join(detail),
            "pass the --model the checkpoint was saved from (see `vlmad models`)",
        )
    _check_dtypes(sd, expected, model_arch, source)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    _materialise_meta_buffers(model)
    return model.eval().requires_grad_(False)


def _check_dtypes(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], arch: str, source: str) -> None:
    """Floating-point model tensors need floating-point checkpoint tensors (fp32/fp16/bf16 are all converted);
    integer or boolean ones (a quantised export, a mislabelled file) would fail deep in torch's copy."""
    bad = [k for k, want in expected.items() if want.is_floating_point() and not sd[k].is_floating_point()]
    if bad:
        k = bad[0]
        raise CheckpointMismatchError(
            f"checkpoint {source}: tensor {k!r} has dtype {str(sd[k].dtype).replace('torch.', '')}, but "
            f"{arch} needs floating-point weights ({len(bad)} such tensor{'s' if len(bad) > 1 else ''}, "
            f"e.g. {', '.join(bad[:3])})",
            "save the weights as a float state dict (float32, float16 or bfloat16), e.g. "
            "`save_file({k: v.float() for k, v in model.state_dict().items()}, path)`; integer tensors mean a "
            "quantised or corrupted export",
        )


def resolve_model(
    arch: str,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    quick_gelu: bool | None = None,
    image_size: int | None = None,
    offline_timeout: float = 3.0,
) -> tuple[nn.Module, WeightsSource]:
    """Build ``arch`` with weights from exactly one source: a hub tag, a local checkpoint, or random init."""
    import open_clip

    register_tiny_configs()
    if arch not in open_clip.list_models():
        import difflib

        by_lower = {m.lower(): m for m in open_clip.list_models()}
        close = [by_lower[m] for m in difflib.get_close_matches(arch.lower(), list(by_lower), n=8, cutoff=0.6)]
        raise UnknownNameError(
            f"unknown model architecture {arch!r}",
            f"run `vlmad models` for the list{'; similar: ' + ', '.join(close) if close else ''}",
        )
    chosen = sum(x is not None and x is not False for x in (pretrained, checkpoint, random_weights or None))
    if chosen != 1:
        raise WeightsUnavailableError(
            "choose exactly one weights source",
            "pass --pretrained TAG (downloads on a machine with network), --checkpoint PATH, "
            "or --random-weights for a smoke test",
        )
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        sd = read_state_dict(path)
        model = load_weights_into(arch, sd, bool(quick_gelu), image_size, str(path))
        fp = file_fingerprint(path)
        return model, WeightsSource("checkpoint", f"checkpoint:{path.name}@{fp[:12]}", f"sha256:{fp}")
    if random_weights:
        torch.manual_seed(seed)
        model = _build_skeleton(arch, bool(quick_gelu), image_size, "cpu").eval().requires_grad_(False)
        fp = f"random:{arch}:seed={seed}:torch={torch.__version__}"
        return model, WeightsSource("random", f"random-init(seed={seed})", fp)

    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = [t for a, t in list_pretrained(arch)]
        raise UnknownNameError(
            f"unknown pretrained tag {pretrained!r} for {arch}",
            f"known tags for {arch}: {', '.join(tags) or 'none'}; or pass --checkpoint PATH",
        )
    if quick_gelu is None:
        quick_gelu = bool(cfg.get("quick_gelu", False))  # OpenAI weights need QuickGELU
    path = _download_or_fail(cfg, arch, pretrained, download_pretrained, offline_timeout)
    try:
        model = load_weights_into(arch, read_state_dict(Path(path)), quick_gelu, image_size, f"{arch}/{pretrained}")
    except (WeightsUnavailableError, CheckpointMismatchError):
        # third-party formats (e.g. OpenAI's TorchScript archives on older open_clip): let open_clip convert them
        kwargs = {"force_quick_gelu": quick_gelu}
        if image_size is not None:
            kwargs["force_image_size"] = image_size
        model = open_clip.create_model(arch, pretrained=path, **kwargs).eval().requires_grad_(False)
    return model, WeightsSource("pretrained", f"{arch}/{pretrained}", f"open_clip:{arch}:{pretrained}")


def _download_or_fail(cfg: dict, arch: str, tag: str, download, offline_timeout: float) -> str:
    """Download (or find in the local cache) the tag's weights; offline, fail within seconds with a hint."""
    online = hub_reachable(offline_timeout)
    try:
        if not online:
            # Cached files still work offline: ask the hub client for the local copy only.
            import huggingface_hub.constants as hf_constants

            saved = hf_constants.HF_HUB_OFFLINE
            hf_constants.HF_HUB_OFFLINE = True
            try:
                path = download(cfg)
            finally:
                hf_constants.HF_HUB_OFFLINE = saved
        else:
            path = download(cfg)
    except Exception as err:
        raise _offline_error(arch, tag, online, err) from err
    if not path:
        raise _offline_error(arch, tag, online, "no download source for this tag")
    return str(path)


def _offline_error(arch: str, tag: str, online: bool, err: object) -> WeightsUnavailableError:
    where = (
        "the hub is reachable but the download failed"
        if online
        else (
            f"this machine cannot reach {hub_address()[0]} (offline or firewalled) and the weights are not in the "
            "local cache"
        )
    )
    return WeightsUnavailableError(
        f"pretrained weights {arch}/{tag} are not available: {where} ({err})",
        f"on a machine with network run `vlmad fetch-weights --model {arch} --pretrained {tag}` and copy the "
        "file here, then pass --checkpoint PATH; or use --random-weights for a smoke test "
        "(scores are meaningless)",
    )
