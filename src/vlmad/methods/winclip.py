"""WinCLIP (zero-shot) and WinCLIP+ (few-shot), Jeong et al., CVPR 2023.

Reference behaviour: anomalib 2.7.0 ``WinClipModel`` (see docs/methods.md). Scores are
``softmax(cos(x, [t_normal, t_anomalous]) / 0.07)[..., 1]`` for the full image and for every sliding window
(scales 2 and 3 on the patch grid); window scores become a per-patch map by a harmonic mean over the windows that
cover each patch (one sparse matmul), and the scales are combined by another harmonic mean. WinCLIP+ adds
nearest-neighbour distances to K normal references' window embeddings and patch tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vlmad.backbones.clip import ClipBackbone
from vlmad.backbones.text_cache import TextEmbeddingCache
from vlmad.methods.base import Detector, DetectorInfo, Images, Prediction
from vlmad.methods.inputs import TENSOR_BICUBIC, to_model_input
from vlmad.prompts import PromptSet, class_display_name, load_prompt_set
from vlmad_runtime.errors import NotReadyError, VlmadError

TEMPERATURE = 0.07


def make_windows(grid: tuple[int, int], scale: int, stride: int = 1) -> torch.Tensor:
    """Patch indices of every ``scale x scale`` window on the grid: (n_windows, scale*scale), raster order."""
    h, w = grid
    if scale < 1 or scale > min(h, w):
        raise VlmadError(
            f"window scale {scale} does not fit the {h}x{w} patch grid", f"use scales between 1 and {min(h, w)}"
        )
    ids = torch.arange(h * w).reshape(h, w)
    tiles = ids.unfold(0, scale, stride).unfold(1, scale, stride)  # (nh, nw, scale, scale)
    return tiles.reshape(-1, scale * scale).contiguous()


def window_incidence(windows: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Sparse (n_patches, n_windows) 0/1 matrix: entry (p, w) = 1 when window w covers patch p."""
    n_win, k = windows.shape
    rows = windows.reshape(-1)
    cols = torch.arange(n_win).repeat_interleave(k)
    values = torch.ones(rows.numel())
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (n_patches, n_win), check_invariants=True
    ).coalesce()


def harmonic_aggregate(window_scores: torch.Tensor, incidence: torch.Tensor) -> torch.Tensor:
    """Per-patch harmonic mean of the scores of covering windows: (B, n_windows) -> (B, n_patches).

    One sparse matmul with the incidence matrix; a patch with a zero-score window gets 0 and an uncovered patch
    gets 0, as in the reference.
    """
    inc = incidence.to(window_scores.device, window_scores.dtype)
    counts = torch.sparse.sum(inc, dim=1).to_dense()
    inv_sum = torch.sparse.mm(inc, (1.0 / window_scores).T).T  # (B, P)
    return (counts / inv_sum).nan_to_num(nan=0.0, posinf=0.0)


def class_scores(embeddings: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Probability of the anomalous prompt class: softmax(cos / T)[..., 1]."""
    cos = F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).T
    return (cos / temperature).softmax(dim=-1)[..., 1]


def association_scores(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """min over the bank of (1 - cos)/2: (B, N, D) x (M, D) -> (B, N)."""
    cos = F.normalize(queries, dim=-1) @ F.normalize(bank, dim=-1).T
    return (1.0 - cos).amin(dim=-1) / 2.0


class WinClip(Detector):
    """WinCLIP / WinCLIP+ behind the Detector contract."""

    name = "winclip"
    #: anomalib 2.7.0's pre-processor on its image tensors (the reference implementation)
    preprocessing = TENSOR_BICUBIC

    def __init__(
        self,
        backbone: ClipBackbone,
        scales: Sequence[int] = (2, 3),
        prompt_set: str | PromptSet = "winclip",
        temperature: float = TEMPERATURE,
        use_image_scale: bool = True,
        batch_size: int = 8,
        cache: TextEmbeddingCache | None = None,
    ) -> None:
        self.backbone = backbone
        self.scales = tuple(int(s) for s in scales)
        if not self.scales and not use_image_scale:
            raise VlmadError("WinCLIP needs at least one window scale or the image scale")
        self.prompt_set = load_prompt_set(prompt_set)
        self.temperature = float(temperature)
        self.use_image_scale = use_image_scale
        self.batch_size = max(1, int(batch_size))
        self.cache = cache if cache is not None else TextEmbeddingCache()
        grid = backbone.grid_size
        self.n_patches = grid[0] * grid[1]
        self.windows = {s: make_windows(grid, s) for s in self.scales}
        self.incidence = {s: window_incidence(w, self.n_patches) for s, w in self.windows.items()}
        self.class_name: str | None = None
        self.text_embeddings: torch.Tensor | None = None  # (2, E): mean normal, mean anomalous
        self._window_bank: dict[int, torch.Tensor] = {}
        self._patch_bank: torch.Tensor | None = None
        self._k = 0

    # ------------------------------------------------------------------ contract
    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def shots(self) -> int:
        return self._k

    def info(self) -> DetectorInfo:
        return DetectorInfo(
            method="winclip+" if self._k else "winclip",
            model=self.backbone.arch,
            weights_id=self.backbone.source.weights_id,
            image_size=self.image_size,
            prompt_set=self.prompt_set.name,
            shots=self._k,
            random_weights=self.backbone.source.is_random,
            extra={
                "scales": list(self.scales),
                "image_scale": self.use_image_scale,
                "precision": self.backbone.precision,
                "temperature": self.temperature,
                "preprocessing": self.preprocessing.name,
                "prompt_hash": self.prompt_set.content_hash(),
            },
        )

    def preprocess(self, images: Images) -> torch.Tensor:
        """Paths / PIL images -> model input through this method's reference pipeline (:attr:`preprocessing`);
        preprocessed (B, 3, S, S) tensors pass through checked."""
        return to_model_input(images, self.backbone, preprocessing=self.preprocessing)

    def setup(self, class_name: str) -> None:
        """Average the prompt embeddings of each class (normalisation happens in the cosine, as in anomalib)."""
        name = class_display_name(class_name)
        normal, anomalous = self.prompt_set.build(name)
        emb = self.cache.embed(self.backbone, normal + anomalous)
        self.text_embeddings = torch.stack([emb[: len(normal)].mean(0), emb[len(normal) :].mean(0)])
        self.class_name = class_name

    def fit(self, reference_images: Images) -> None:
        """Store window embeddings per scale and ln_post patch tokens of K normal references."""
        refs = self.preprocess(reference_images)
        if refs.shape[0] == 0:
            raise VlmadError("fit() got no reference images", "pass at least one normal image")
        windows, patches = {s: [] for s in self.scales}, []
        for start in range(0, refs.shape[0], self.batch_size):
            feats = self.backbone.encode_image(refs[start : start + self.batch_size])
            patches.append(feats.patch_tokens.float())
            for s in self.scales:
                windows[s].append(self.backbone.window_embeddings(feats.embedded, self.windows[s]).float())
        self._patch_bank = torch.cat(patches).reshape(-1, patches[0].shape[-1])
        self._window_bank = {s: torch.cat(w).reshape(-1, w[0].shape[-1]) for s, w in windows.items()}
        self._k = refs.shape[0]

    def reset_references(self) -> None:
        self._window_bank, self._patch_bank, self._k = {}, None, 0

    def export_references(self) -> dict[str, Any]:
        return {"shots": self._k, "window_bank": dict(self._window_bank), "patch_bank": self._patch_bank}

    def load_references(self, state: dict[str, Any]) -> None:
        shots, windows = int(state["shots"]), dict(state.get("window_bank") or {})
        if shots and set(windows) != set(self.scales):
            raise VlmadError(
                f"reference memory has window scales {sorted(windows)}, this detector uses {sorted(self.scales)}",
                "fit the references again with this detector",
            )
        self._window_bank, self._patch_bank, self._k = windows, state.get("patch_bank"), shots

    def predict(self, images: Images) -> Prediction:
        if self.text_embeddings is None:
            raise NotReadyError(
                "WinCLIP.predict() called before setup(class_name)", "call setup() with the object class name first"
            )
        batch = self.preprocess(images)
        scores, maps = [], []
        for start in range(0, batch.shape[0], self.batch_size):
            s, m = self._predict_batch(batch[start : start + self.batch_size])
            scores.append(s)
            maps.append(m)
        return Prediction(torch.cat(scores), torch.cat(maps))

    def export_module(self) -> torch.nn.Module:
        """This detector (text and few-shot memory included) as one traceable graph, for `vlmad export`."""
        if self.text_embeddings is None:
            raise NotReadyError("export before setup(class_name)", "call setup() with the object class name first")
        from vlmad.methods.winclip_export import WinClipGraph

        return WinClipGraph(self).eval()

    # ------------------------------------------------------------------ internals
    @torch.inference_mode()
    def _predict_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bb = self.backbone
        gh, gw = bb.grid_size
        text = self.text_embeddings.to(bb.device)
        feats = bb.encode_image(batch, need_patch_tokens=bool(self._k))
        window_emb = {s: bb.window_embeddings(feats.embedded, self.windows[s]).float() for s in self.scales}
        image_scores = class_scores(feats.pooled.float(), text, self.temperature)

        per_scale = []
        if self.use_image_scale:
            per_scale.append(image_scores[:, None].expand(-1, self.n_patches))
        for s in self.scales:
            per_scale.append(harmonic_aggregate(class_scores(window_emb[s], text, self.temperature), self.incidence[s]))
        zero_shot = len(per_scale) / (1.0 / torch.stack(per_scale)).sum(dim=0)  # (B, P)

        grid_map = zero_shot
        if self._k:
            few = [association_scores(feats.patch_tokens.float(), self._patch_bank)]
            for s in self.scales:
                few.append(
                    harmonic_aggregate(association_scores(window_emb[s], self._window_bank[s]), self.incidence[s])
                )
            few_shot = torch.stack(few).mean(dim=0)
            grid_map = (zero_shot + few_shot) / 2
            image_scores = (image_scores + few_shot.amax(dim=-1)) / 2
        maps = F.interpolate(grid_map.reshape(-1, 1, gh, gw), size=tuple(batch.shape[-2:]), mode="bilinear")
        return image_scores.float().cpu(), maps[:, 0].float().cpu()
