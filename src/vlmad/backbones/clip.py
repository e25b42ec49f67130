"""A CLIP backbone with the dense surfaces anomaly detection needs.

open_clip gives pooled embeddings; WinCLIP needs window embeddings ([CLS] + a subset of patch tokens, each with
its original positional embedding) and ln_post patch tokens, APRIL-GAN needs raw tokens of intermediate blocks.
:class:`ClipBackbone` exposes all of them through calls on the submodules (no forward hooks, so nothing leaks),
batched in memory-bounded chunks, and runs open_clip's own modules when an architecture is not the standard
pre-norm ViT (``fast=False`` forces that reference path, which tests compare against).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from vlmad.backbones.cpu import tune_cpu_allocator
from vlmad.backbones.fast import FastBlock, is_standard_block
from vlmad.backbones.loading import WeightsSource, resolve_model
from vlmad.backbones.preprocessing import normalize, resize_tensor_bicubic
from vlmad_runtime.errors import VlmadError

PRECISIONS = ("fp32", "int8", "fp16", "bf16")
DEFAULT_CHUNK_TOKENS = 2048  # ~fits L2 per chunk: measured fastest on CPU and keeps peak memory low


@dataclass
class ImageFeatures:
    """Everything one full-image forward yields.

    ``embedded``: tokens after patch embedding + positional embedding, before ln_pre (B, 1+P, W) — the input of
    window sequences. ``pooled``: projected [CLS] (B, E). ``patch_tokens``: ln_post patch tokens, not projected
    (B, P, W). ``intermediates``: raw residual stream after the requested blocks (1-based), (B, 1+P, W) each.
    """

    embedded: torch.Tensor
    pooled: torch.Tensor
    patch_tokens: torch.Tensor
    intermediates: dict[int, torch.Tensor] = field(default_factory=dict)


class ClipBackbone:
    """An open_clip model plus the windowed / multi-layer forwards, text encoding and preprocessing facts."""

    def __init__(
        self,
        model: nn.Module,
        arch: str,
        source: WeightsSource,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        fast: bool = True,
    ) -> None:
        import open_clip

        if precision not in PRECISIONS:
            raise VlmadError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise VlmadError("--device cuda was requested but no CUDA device is available", "use --device cpu")
        if precision == "fp16" and self.device.type != "cuda":
            raise VlmadError("fp16 is only supported on CUDA", "use --precision fp32 or int8 on CPU")
        if precision == "int8" and self.device.type != "cpu":
            raise VlmadError("int8 dynamic quantisation runs on CPU only", "use fp16 or bf16 on GPU")
        if self.device.type == "cpu":
            tune_cpu_allocator()
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.arch = arch
        self.source = source
        self.precision = precision
        self.chunk_tokens = int(chunk_tokens)
        self.tokenizer = open_clip.get_tokenizer(arch)
        visual = model.visual
        if not hasattr(visual, "conv1") or not hasattr(visual, "positional_embedding"):
            raise VlmadError(
                f"{arch} has no ViT vision tower with patch tokens",
                "vlmad's methods need an open_clip VisionTransformer (e.g. ViT-B-16-plus-240, ViT-L-14-336)",
            )
        self.visual = visual
        self.image_size = int(_first(visual.image_size))
        self.patch_size = int(_first(visual.patch_size))
        self.grid_size = tuple(int(g) for g in visual.grid_size)
        self.width = int(visual.class_embedding.shape[-1])
        self.embed_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width
        self.num_layers = len(visual.transformer.resblocks)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))

        # cast before the fast blocks are built: they hold the model's parameter tensors themselves
        self.compute_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        if self.compute_dtype != torch.float32:
            self.model.to(self.compute_dtype)
        blocks = list(visual.transformer.resblocks)
        self.fast = fast and all(is_standard_block(b) for b in blocks) and getattr(visual, "attn_pool", None) is None
        self.fast_blocks = (
            nn.ModuleList(FastBlock(b, cls_only_capable=(i == len(blocks) - 1)) for i, b in enumerate(blocks))
            if self.fast
            else None
        )
        self.text_fast_blocks = self._build_text_fast_blocks(fast)
        if precision == "int8":
            self._quantize_int8()

    # ------------------------------------------------------------------ construction helpers
    def _build_text_fast_blocks(self, fast: bool) -> nn.ModuleList | None:
        m = self.model
        plain_text = (
            fast
            and hasattr(m, "token_embedding")
            and hasattr(m, "transformer")
            and getattr(m, "text_pool_type", "argmax") == "argmax"
            and getattr(m, "attn_mask", None) is not None
            and getattr(m, "cls_emb", None) is None
            and all(is_standard_block(b) for b in m.transformer.resblocks)
        )
        if not plain_text:
            return None
        causal = torch.full(tuple(m.attn_mask.shape), float("-inf"), device=m.attn_mask.device).triu_(1)
        if not torch.equal(m.attn_mask.float(), causal):
            return None
        return nn.ModuleList(FastBlock(b) for b in m.transformer.resblocks)

    def _quantize_int8(self) -> None:
        """Dynamic int8 quantisation of the linear layers of the fast paths (weights int8, activations fp32)."""
        import warnings

        if self.fast_blocks is None:
            raise VlmadError(f"int8 needs the standard ViT block layout; {self.arch} does not have it")
        with warnings.catch_warnings():
            # torch.ao's eager dynamic quantisation is deprecated in favour of torchao, but still the one
            # dependency-free way to get int8 GEMMs on CPU in torch 2.x
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            from torch.ao.quantization import quantize_dynamic

            quantize_dynamic(self.fast_blocks, {nn.Linear}, dtype=torch.qint8, inplace=True)
            if self.text_fast_blocks is not None:
                quantize_dynamic(self.text_fast_blocks, {nn.Linear}, dtype=torch.qint8, inplace=True)

    @classmethod
    def load(
        cls,
        arch: str,
        pretrained: str | None = None,
        checkpoint: str | None = None,
        random_weights: bool = False,
        seed: int = 0,
        quick_gelu: bool | None = None,
        image_size: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        fast: bool = True,
    ) -> ClipBackbone:
        model, source = resolve_model(
            arch,
            pretrained=pretrained,
            checkpoint=checkpoint,
            random_weights=random_weights,
            seed=seed,
            quick_gelu=quick_gelu,
            image_size=image_size,
        )
        return cls(model, arch, source, device=device, precision=precision, chunk_tokens=chunk_tokens, fast=fast)

    @property
    def fingerprint(self) -> str:
        """Identity of the weights *and* everything that changes text embeddings (for the cache key)."""
        act = type(self.model.transformer.resblocks[0].mlp[1]).__name__ if hasattr(self.model, "transformer") else ""
        return f"{self.arch}|{self.source.fingerprint}|{self.precision}|{act}"

    # ------------------------------------------------------------------ text
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(prompts))

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
        """Embed prompts (N, E), float32, not normalised.

        Duplicated prompts are embedded once. Under the causal mask the outputs up to the end token do not depend on
        the padding after it, so the context is cut to the longest prompt's end: the same numbers for ~1/4 of the
        work on typical prompt ensembles.
        """
        unique = list(dict.fromkeys(prompts))
        index = {p: i for i, p in enumerate(unique)}
        out = []
        for start in range(0, len(unique), batch_size):
            tokens = self.tokenize(unique[start : start + batch_size]).to(self.device)
            out.append(self._encode_tokens(tokens).float())
        emb = torch.cat(out)
        return emb[torch.tensor([index[p] for p in prompts], device=emb.device)]

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.text_fast_blocks is None:
            return m.encode_text(tokens)
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        x = m.token_embedding(tokens[:, :length]).to(self.compute_dtype)
        x = x + m.positional_embedding[:length].to(self.compute_dtype)
        for blk in self.text_fast_blocks:
            x = blk(x, causal=True)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = m.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    # ------------------------------------------------------------------ images
    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding + [CLS] + positional embedding, before ln_pre: (B, 1+P, W)."""
        v = self.visual
        x = v.conv1(images.to(self.device, self.compute_dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls_tok = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls_tok, x], dim=1)
        return x + v.positional_embedding.to(x.dtype)

    @torch.inference_mode()
    def encode_image(
        self, images: torch.Tensor, layers: Sequence[int] = (), need_final: bool = True, need_patch_tokens: bool = True
    ) -> ImageFeatures:
        """Full-image forward; ``layers`` (1-based block indices) returns raw intermediate tokens too.

        ``need_final=False`` stops after the last requested layer; ``need_patch_tokens=False`` lets the last block
        compute only the [CLS] row (zero-shot WinCLIP needs nothing else).
        """
        v = self.visual
        embedded = self.embed_patches(images)
        wanted = set(int(i) for i in layers)
        bad = [i for i in wanted if not 1 <= i <= self.num_layers]
        if bad:
            raise VlmadError(f"block indices {bad} out of range for {self.arch} (1..{self.num_layers})")
        last = self.num_layers if need_final else max(wanted, default=0)
        x = v.ln_pre(embedded)
        inter: dict[int, torch.Tensor] = {}
        if self.fast_blocks is not None:
            cls_only_last = need_final and not need_patch_tokens and self.num_layers not in wanted
            for i, blk in enumerate(self.fast_blocks[:last], start=1):
                x = blk(x, cls_only=cls_only_last and i == self.num_layers)
                if i in wanted:
                    inter[i] = x.clone()  # blocks update their input in place
        else:
            batch_first = getattr(v.transformer, "batch_first", False)
            x = x if batch_first else x.permute(1, 0, 2)
            for i, blk in enumerate(v.transformer.resblocks[:last], start=1):
                x = blk(x)
                if i in wanted:
                    inter[i] = x if batch_first else x.permute(1, 0, 2)
            x = x if batch_first else x.permute(1, 0, 2)
        if not need_final:
            empty = embedded.new_empty(0)
            return ImageFeatures(embedded, empty, empty, inter)
        x = v.ln_post(x)
        pooled = x[:, 0]
        if v.proj is not None:
            pooled = pooled @ v.proj
        return ImageFeatures(embedded, pooled, x[:, 1:] if need_patch_tokens else x.new_empty(0), inter)

    @torch.inference_mode()
    def window_embeddings(self, embedded: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Projected [CLS] embedding of every window sequence: (B, n_windows, E).

        ``windows`` (n_windows, k) holds patch indices (0-based, raster order). Each sequence is [CLS] + those patch
        tokens, carrying their original positional embeddings, through ln_pre, the transformer and ln_post.
        Sequences are processed in chunks of about ``chunk_tokens`` tokens, so memory stays bounded at any batch.
        """
        v = self.visual
        batch, n_win = embedded.shape[0], windows.shape[0]
        seq = torch.cat([windows.new_zeros(n_win, 1), windows + 1], dim=1).to(self.device)
        length = seq.shape[1]
        per_chunk = max(1, self.chunk_tokens // length)
        x0 = v.ln_pre(embedded)  # gathered (copied) per chunk, so the blocks may update their input in place
        qkv0 = None
        if self.fast_blocks is not None:
            first = self.fast_blocks[0]
            qkv0 = first.qkv(first.ln_1(x0))  # shared by every window containing the token
        flat_b = torch.arange(batch, device=self.device).repeat_interleave(n_win)
        flat_w = torch.arange(n_win, device=self.device).repeat(batch)
        out = []
        for start in range(0, batch * n_win, per_chunk):
            b = flat_b[start : start + per_chunk, None]
            idx = seq[flat_w[start : start + per_chunk]]
            out.append(self._window_cls(x0[b, idx], None if qkv0 is None else qkv0[b, idx]))
        pooled = v.ln_post(torch.cat(out))
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled.reshape(batch, n_win, -1)

    def _window_cls(self, x: torch.Tensor, qkv0: torch.Tensor | None) -> torch.Tensor:
        """Transformer output of the [CLS] token of each sequence in ``x`` (N, L, W) -> (N, W)."""
        if self.fast_blocks is None:
            tr = self.visual.transformer
            batch_first = getattr(tr, "batch_first", False)
            y = tr(x if batch_first else x.permute(1, 0, 2))
            return (y if batch_first else y.permute(1, 0, 2))[:, 0]
        blocks = self.fast_blocks
        n = len(blocks)
        for i, blk in enumerate(blocks):
            x = blk(x, qkv=qkv0 if i == 0 else None, cls_only=(i == n - 1))
        return x[:, 0]

    def preprocess_tensor(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """[0,1] RGB tensors (B,3,H,W) -> model input: bicubic antialiased resize (not clamped), CLIP mean/std.

        For tensors already in memory (tests, benchmarks). Image *files* go through their method's declared
        pipeline (:mod:`vlmad.backbones.preprocessing`): APRIL-GAN's resizes the uint8 image with PIL instead.
        """
        return normalize(resize_tensor_bicubic(images, size or self.image_size), self.mean, self.std)


def _first(value) -> int:
    return value[0] if isinstance(value, (tuple, list)) else value
