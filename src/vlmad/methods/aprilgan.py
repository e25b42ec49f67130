"""APRIL-GAN (Chen et al., VAND 2023 challenge): zero-shot segmentation with trained projection heads, plus
the few-shot memory bank. Reference behaviour: ByChelsea/VAND-APRIL-GAN (docs/methods.md), whose defaults vlmad's
are: ViT-L-14-336 at 518 px *without* QuickGELU (the reference rebuilds the model from its JSON config), raw folder
names in the prompts, PIL bicubic resizing of uint8 images (:data:`vlmad.methods.inputs.PIL_BICUBIC`).

Equations (``S`` = model input side, ``G`` = patch grid, one entry per stage ``s``, e.g. blocks 6/12/18/24):

* text: ``t_c = normalize(mean_i normalize(embed(prompt_i)))`` for c in {normal, anomalous} -> ``T`` (2, E);
* stage map: ``z_s = normalize(head_s(tokens_s[1:]))`` (raw residual tokens after block s, CLS dropped, no
  ln_post / proj), ``l_s = 100 * z_s @ T^T`` (P, 2), reshaped to G x G, bilinearly upsampled to S x S
  (align_corners=True), softmax over the two channels; ``map = sum_s softmax(l_s)[anomalous]``;
* image score (zero-shot): ``softmax(100 * normalize(CLS_embedding) @ T^T)[anomalous]``; the heads are not
  used;
* few-shot (K normal references): ``map += sum_s upsample(min over the stage-s bank of (1 - cos))`` and
  ``score = 0.5 * (CLS probability + max of map)``.

Implementation notes: softmax over two channels is ``sigmoid(l_anomalous - l_normal)`` and bilinear upsampling
is linear, so one channel (the logit difference) is upsampled instead of two; the few-shot distances are
summed over stages on the grid and upsampled once. Nearest-neighbour search is one chunked matmul per stage
(no sklearn, no per-image loop).

The reference min-max-normalises the few-shot map maxima over a class's whole test set before averaging them
with the CLS probability. That uses test-set statistics, so it is off by default; ``transductive=True``
declares it (and ``info()`` records it) and :meth:`AprilGan.normalize_scores_transductive` applies it to a
whole class's predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlmad.backbones.clip import ClipBackbone
from vlmad.backbones.text_cache import TextEmbeddingCache
from vlmad.methods.base import Detector, DetectorInfo, Images, Prediction
from vlmad.methods.heads import ProjectionHeads, backbone_activation
from vlmad.methods.inputs import PIL_BICUBIC, to_model_input
from vlmad.prompts import PromptSet, class_display_name, load_prompt_set
from vlmad_runtime.errors import NotReadyError, VlmadError

LOGIT_SCALE = 100.0
DEFAULT_IMAGE_SIZE = 518
CLASS_NAME_STYLES = ("raw", "display")
#: the reference's: raw folder names ("metal_nut") in the prompts
DEFAULT_CLASS_NAME_STYLE = "raw"
#: elements of one similarity block in the nearest-neighbour search (64 Mi floats = 256 MiB)
DEFAULT_ASSOC_ELEMS = 1 << 26


# ------------------------------------------------------------------------------------------ pure functions
def default_stages(num_layers: int, count: int = 4) -> tuple[int, ...]:
    """``count`` evenly spaced blocks ending at the last one (1-based): 24 -> (6, 12, 18, 24), 12 -> (3, 6, 9,
    12).

    Shallow models get fewer, de-duplicated stages (2 layers -> (1, 2)).
    """
    if num_layers < 1:
        raise VlmadError(f"a backbone with {num_layers} blocks has no stages to tap")
    stages = [max(1, -(-num_layers * k // count)) for k in range(1, count + 1)]  # ceil(n * k / count)
    return tuple(dict.fromkeys(stages))


def check_stages(stages: Sequence[int], num_layers: int, arch: str = "backbone") -> tuple[int, ...]:
    out = tuple(int(s) for s in stages)
    if not out:
        raise VlmadError("APRIL-GAN needs at least one stage", f"e.g. {','.join(map(str, default_stages(num_layers)))}")
    bad = [s for s in out if not 1 <= s <= num_layers]
    if bad:
        raise VlmadError(
            f"stage block indices {bad} out of range for {arch} (1..{num_layers})",
            f"the default for {arch} is {','.join(map(str, default_stages(num_layers)))}",
        )
    if len(set(out)) != len(out):
        raise VlmadError(f"duplicate stages in {list(out)}", "list every block index once")
    return out


def ensemble_text(embeddings: torch.Tensor, n_normal: int) -> torch.Tensor:
    """(N, E) prompt embeddings -> (2, E): per class, L2-normalise each, average, re-normalise."""
    emb = F.normalize(embeddings.float(), dim=-1)
    return F.normalize(torch.stack([emb[:n_normal].mean(0), emb[n_normal:].mean(0)]), dim=-1)


def image_scores(pooled: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """softmax(100 * normalize(CLS embedding) @ text^T)[anomalous]: (B, E) x (2, E) -> (B,)."""
    logits = LOGIT_SCALE * F.normalize(pooled.float(), dim=-1) @ text.float().T
    return logits.softmax(dim=-1)[:, 1]


def stage_logit_gap(projected: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``l_anomalous - l_normal`` of ``100 * normalize(projected) @ text^T``: (B, P, E) -> (B, P).

    ``text`` is (2, E) (one class) or (B, 2, E) (one class per image, as in training batches).
    """
    z = F.normalize(projected, dim=-1)
    t = text.to(z.dtype)
    gap = t[..., 1, :] - t[..., 0, :]  # (E,) or (B, E)
    if gap.ndim == 1:
        return LOGIT_SCALE * (z @ gap)
    return LOGIT_SCALE * torch.einsum("bpe,be->bp", z, gap)


def upsample_grid(values: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """(B, P) on the patch grid -> (B, S, S), bilinear with align_corners=True (as the reference)."""
    x = values.reshape(values.shape[0], 1, grid[0], grid[1])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)[:, 0]


def stage_probabilities(
    projected: Sequence[torch.Tensor], text: torch.Tensor, grid: tuple[int, int], size: int
) -> list[torch.Tensor]:
    """Per stage: anomalous-channel probability of the upsampled two-class softmax, (B, S, S) each."""
    return [torch.sigmoid(upsample_grid(stage_logit_gap(p, text), grid, size)) for p in projected]


def min_cosine_distance(
    queries: torch.Tensor,
    bank: torch.Tensor,
    max_elems: int = DEFAULT_ASSOC_ELEMS,
    bank_normalized: bool = False,
) -> torch.Tensor:
    """min over the bank of (1 - cos): (B, P, D) x (M, D) -> (B, P).

    One matmul per bank chunk with a running maximum of the cosine, so memory stays at ``max_elems`` floats
    whatever K and the batch size are. ``min(1 - cos) == 1 - max(cos)`` exactly (subtraction is monotone).
    ``bank_normalized=True`` skips re-normalising a bank whose rows are already unit vectors.
    """
    b_, p_, d = queries.shape
    q = F.normalize(queries.float(), dim=-1).reshape(-1, d)
    bank = bank.float().to(q.device)
    if not bank_normalized:
        bank = F.normalize(bank, dim=-1)
    rows_per_chunk = max(1, int(max_elems) // max(1, q.shape[0]))
    best = None
    for start in range(0, bank.shape[0], rows_per_chunk):
        sim = (q @ bank[start : start + rows_per_chunk].T).amax(dim=1)
        best = sim if best is None else torch.maximum(best, sim)
    if best is None:
        raise VlmadError("the few-shot memory bank is empty", "call fit() with at least one normal image")
    return (1.0 - best).reshape(b_, p_)


def patch_tokens(backbone: ClipBackbone, batch: torch.Tensor, stages: Sequence[int], need_final: bool = True):
    """One backbone forward: (per-stage raw patch tokens (B, P, W) fp32 without CLS, pooled CLS or None)."""
    feats = backbone.encode_image(batch, layers=stages, need_final=need_final)
    tokens = [feats.intermediates[s][:, 1:].float() for s in stages]
    return tokens, (feats.pooled.float() if need_final else None)


# ---------------------------------------------------------------------------------------------- the detector
@dataclass
class AprilGanPrediction(Prediction):
    """A :class:`Prediction` that also keeps the parts of the image score (for transductive normalisation).

    ``cls_scores``: the CLS probability (B,); ``map_max``: max of the anomaly map at model resolution (B,).
    """

    cls_scores: torch.Tensor | None = None
    map_max: torch.Tensor | None = None


class AprilGan(Detector):
    """APRIL-GAN (zero-shot with trained heads) and its few-shot memory bank behind the Detector contract.

    ``heads``: a heads file written by ``vlmad train aprilgan`` (``.safetensors`` with its ``.json`` sidecar),
    or a :class:`ProjectionHeads` instance (e.g. straight from training). Without heads the segmentation maps
    would come from random projections, so construction fails with a hint, unless ``allow_untrained=True``
    (smoke tests, benchmarks, or when only the image score — which does not use the heads — is wanted);
    ``info()`` records it.

    ``stages``: 1-based block indices (default: the heads' stages, else 4 evenly spaced blocks).
    ``prompt_set`` / ``class_name_style`` default to what the heads were trained with, else "aprilgan" /
    "raw". ``class_name_style``: "raw" (the reference code puts the folder name, underscore included, into the
    prompts; its released heads and published numbers mean that) or "display" ("metal_nut" -> "metal nut"), a
    named option recorded in ``info()`` like the backbone activation (GELU by default, as the reference).
    ``transductive``: declare the
    reference's test-set min-max normalisation of the few-shot map maxima; apply it with
    :meth:`normalize_scores_transductive` over a whole class. ``predict`` itself never uses test statistics.
    ``check_weights``: refuse heads whose sidecar says they were trained on other backbone weights.
    """

    name = "aprilgan"
    #: the reference's: PIL bicubic resize of the uint8 image, squashed to S x S
    preprocessing = PIL_BICUBIC

    def __init__(
        self,
        backbone: ClipBackbone,
        heads: str | Path | ProjectionHeads | None = None,
        stages: Sequence[int] | None = None,
        prompt_set: str | PromptSet | None = None,
        allow_untrained: bool = False,
        transductive: bool = False,
        class_name_style: str | None = None,
        batch_size: int = 4,
        head_seed: int = 0,
        check_weights: bool = True,
        assoc_max_elems: int = DEFAULT_ASSOC_ELEMS,
        cache: TextEmbeddingCache | None = None,
    ) -> None:
        self.backbone = backbone
        self.transductive = bool(transductive)
        self.batch_size = max(1, int(batch_size))
        self.assoc_max_elems = int(assoc_max_elems)
        self.cache = cache if cache is not None else TextEmbeddingCache()
        self.heads_meta: dict[str, Any] | None = None
        self.heads_path: Path | None = None
        self.untrained = False

        if isinstance(heads, (str, Path)):
            module = self._heads_from_file(heads, stages, check_weights)
        elif isinstance(heads, ProjectionHeads):
            module = self._heads_given(heads, stages)
        elif heads is None:
            module = self._heads_seeded(stages, allow_untrained, head_seed)
        else:
            raise VlmadError(
                f"cannot use {type(heads).__name__} as APRIL-GAN heads",
                "pass a heads file path or a ProjectionHeads module",
            )
        self.heads = module.to(backbone.device).float().eval().requires_grad_(False)
        # prompts: what the caller asks for, else what the heads were trained with, else the APRIL-GAN set
        meta = self.heads_meta or {}
        if prompt_set is None:
            prompt_set = meta.get("prompt_set_definition") or meta.get("prompt_set") or "aprilgan"
        self.prompt_set = load_prompt_set(prompt_set)
        style = class_name_style or meta.get("class_name_style") or DEFAULT_CLASS_NAME_STYLE
        if style not in CLASS_NAME_STYLES:
            raise VlmadError(f"unknown class_name_style {style!r}", f"use one of {', '.join(CLASS_NAME_STYLES)}")
        self.class_name_style = style
        self.class_name: str | None = None
        self.text_embeddings: torch.Tensor | None = None  # (2, E) normalised
        self._banks: list[torch.Tensor] = []
        self._k = 0

    # ------------------------------------------------------------------ heads sources
    def _heads_from_file(self, path: str | Path, stages: Sequence[int] | None, check_weights: bool) -> nn.Module:
        """Trained heads from a heads file: their stages (``stages`` must agree) and backbone are checked."""
        from vlmad.training.heads_io import check_compatible, heads_paths, load_heads

        backbone = self.backbone
        state, meta = load_heads(path)
        head_stages = tuple(int(s) for s in meta["stages"])
        if stages is not None and tuple(int(s) for s in stages) != head_stages:
            raise VlmadError(
                f"stages {list(stages)} differ from the stages the heads were trained on {list(head_stages)}",
                "omit stages (the heads' own are used) or train heads for these stages",
            )
        check_compatible(meta, backbone, check_weights=check_weights)
        self.stages = check_stages(head_stages, backbone.num_layers, backbone.arch)
        module = ProjectionHeads(backbone.width, backbone.embed_dim, len(self.stages))
        module.load_state_dict(state, strict=True)
        self.heads_meta, self.heads_path = meta, heads_paths(path)[0]
        return module

    def _heads_given(self, heads: ProjectionHeads, stages: Sequence[int] | None) -> nn.Module:
        """An in-memory heads module (training, tests); its shape must fit the backbone and stage list."""
        backbone = self.backbone
        self.stages = check_stages(
            stages if stages is not None else default_stages(backbone.num_layers), backbone.num_layers, backbone.arch
        )
        if (heads.width, heads.embed_dim, len(heads)) != (backbone.width, backbone.embed_dim, len(self.stages)):
            raise VlmadError(
                f"heads map {len(heads)} x ({heads.width} -> {heads.embed_dim}) but {backbone.arch} with "
                f"{len(self.stages)} stages needs {len(self.stages)} x "
                f"({backbone.width} -> {backbone.embed_dim})",
                "build the heads for this backbone and stage list",
            )
        return heads

    def _heads_seeded(self, stages: Sequence[int] | None, allow_untrained: bool, head_seed: int) -> nn.Module:
        """Randomly initialised heads (seeded): only when the caller allows untrained heads."""
        if not allow_untrained:
            raise NotReadyError(
                "APRIL-GAN needs trained projection heads; without them its anomaly maps are random projections",
                "train heads with `vlmad train aprilgan ...` and pass heads=PATH (CLI: --heads PATH); "
                "allow_untrained=True runs with randomly initialised heads (smoke tests, speed checks, "
                "or when only the image score is used)",
            )
        backbone = self.backbone
        self.stages = check_stages(
            stages if stages is not None else default_stages(backbone.num_layers), backbone.num_layers, backbone.arch
        )
        self.untrained = True
        self.head_seed = int(head_seed)
        return ProjectionHeads.seeded(backbone.width, backbone.embed_dim, len(self.stages), head_seed)

    # ------------------------------------------------------------------ contract
    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def shots(self) -> int:
        return self._k

    @property
    def grid(self) -> tuple[int, int]:
        return self.backbone.grid_size

    def heads_id(self) -> str:
        if self.untrained:
            return f"untrained(seed={self.head_seed})"
        if self.heads_path is not None and self.heads_meta is not None:
            return f"{self.heads_path.name}@{str(self.heads_meta.get('sha256', ''))[:12]}"
        return f"in-memory@{self.heads.digest()[:12]}"

    def info(self) -> DetectorInfo:
        training = (self.heads_meta or {}).get("training", {})
        return DetectorInfo(
            method="aprilgan",
            model=self.backbone.arch,
            weights_id=self.backbone.source.weights_id,
            image_size=self.image_size,
            prompt_set=self.prompt_set.name,
            shots=self._k,
            transductive=self.transductive,
            random_weights=self.backbone.source.is_random,
            extra={
                "stages": list(self.stages),
                "heads": self.heads_id(),
                "heads_untrained": self.untrained,
                "heads_training_data": training.get("data"),
                "heads_epoch": training.get("epoch"),
                "class_name_style": self.class_name_style,
                "precision": self.backbone.precision,
                "activation": backbone_activation(self.backbone),
                "preprocessing": self.preprocessing.name,
                "prompt_hash": self.prompt_set.content_hash(),
            },
        )

    def preprocess(self, images: Images) -> torch.Tensor:
        """Paths / PIL images -> model input through this method's reference pipeline (:attr:`preprocessing`);
        preprocessed (B, 3, S, S) tensors pass through checked."""
        return to_model_input(images, self.backbone, preprocessing=self.preprocessing)

    def prompt_class_name(self, class_name: str) -> str:
        return class_display_name(class_name) if self.class_name_style == "display" else class_name

    def setup(self, class_name: str) -> None:
        """Prompt ensemble of the class: each prompt embedding normalised, averaged per class,
        re-normalised."""
        self.text_embeddings = class_text_embeddings(
            self.backbone, self.prompt_set, self.prompt_class_name(class_name), self.cache
        )
        self.class_name = class_name

    def fit(self, reference_images: Images) -> None:
        """Memory bank of K normal references: per stage, all their raw patch tokens (K * P, width).

        Rows are stored L2-normalised (only cosines are ever taken), so ``predict`` does not redo it.
        """
        refs = self.preprocess(reference_images)
        if refs.shape[0] == 0:
            raise VlmadError("fit() got no reference images", "pass at least one normal image")
        per_stage: list[list[torch.Tensor]] = [[] for _ in self.stages]
        for start in range(0, refs.shape[0], self.batch_size):
            tokens, _ = patch_tokens(
                self.backbone, refs[start : start + self.batch_size], self.stages, need_final=False
            )
            for bank, t in zip(per_stage, tokens, strict=True):
                bank.append(t.reshape(-1, t.shape[-1]))
        self._banks = [F.normalize(torch.cat(b), dim=-1) for b in per_stage]  # unit rows, normalised once
        self._k = int(refs.shape[0])

    def reset_references(self) -> None:
        self._banks, self._k = [], 0

    def restrict_stages(self, stages: Sequence[int]) -> None:
        """Keep only ``stages`` (a subset of this detector's) with their heads: the study's stage ablation runs
        the same trained heads on fewer stages. Forgets the few-shot memory (it was built per stage)."""
        wanted = tuple(int(s) for s in stages)
        bad = [s for s in wanted if s not in self.stages]
        if bad or not wanted:
            raise VlmadError(
                f"stage {bad[0] if bad else '(none)'} is not one of the detector's stages {list(self.stages)}",
                "pick a non-empty subset of the stages",
            )
        idx = [self.stages.index(s) for s in wanted]
        self.heads.heads = nn.ModuleList([self.heads.heads[i] for i in idx])
        self.stages = wanted
        self.reset_references()

    def export_references(self) -> dict[str, Any]:
        return {"shots": self._k, "banks": list(self._banks)}

    def load_references(self, state: dict[str, Any]) -> None:
        shots, banks = int(state["shots"]), list(state.get("banks") or [])
        if shots and len(banks) != len(self.stages):
            raise VlmadError(
                f"reference memory has {len(banks)} stage banks, this detector uses {len(self.stages)} stages",
                "fit the references again with this detector",
            )
        self._banks, self._k = banks, shots

    def predict(self, images: Images) -> AprilGanPrediction:
        if self.text_embeddings is None:
            raise NotReadyError(
                "APRIL-GAN predict() called before setup(class_name)",
                "call setup() with the object class name first",
            )
        batch = self.preprocess(images)
        parts = [self._predict_batch(batch[i : i + self.batch_size]) for i in range(0, batch.shape[0], self.batch_size)]
        if not parts:
            s = self.image_size
            empty = torch.empty(0)
            return AprilGanPrediction(empty, torch.empty(0, s, s), empty.clone(), empty.clone())
        return AprilGanPrediction(*(torch.cat(p) for p in zip(*parts, strict=True)))

    def check_protocol(
        self, dataset_kind: str, dataset_root: str, category: str, force: bool = False
    ) -> dict[str, Any]:
        """The harness's leakage guard: heads trained on this category's images make a result not zero-shot."""
        from vlmad.training.heads_io import check_leakage

        label = check_leakage(self.heads_meta, dataset_kind, category, force=force, dataset_root=dataset_root)
        return {"leakage": label} if label else {}

    def finalize(self, image_scores: torch.Tensor, anomaly_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-category post-processing: the reference's transductive score normalisation when declared."""
        if not self.transductive:
            return image_scores, anomaly_maps
        out = self.normalize_scores_transductive(Prediction(image_scores, anomaly_maps))
        return out.image_scores, out.anomaly_maps

    def normalize_scores_transductive(self, predictions: Prediction | Sequence[Prediction]) -> AprilGanPrediction:
        """The reference's few-shot image score over a class's *whole* test set (transductive).

        ``score = 0.5 * (CLS probability + minmax(map maxima over all given images))``; pass every test
        prediction of one class (one Prediction or a list of batches, in order). Zero-shot predictions are
        returned unchanged (the reference's zero-shot image score is the CLS probability alone). If all maxima
        are equal the normalised term is 0 (the reference would divide by zero). Only allowed on a detector
        created with ``transductive=True``, so that ``info()`` labels every result that uses it.
        """
        if not self.transductive:
            raise VlmadError(
                "transductive score normalisation uses statistics of the whole test set",
                "create the detector with transductive=True (recorded in info() and every result) to use it",
            )
        preds = [predictions] if isinstance(predictions, Prediction) else list(predictions)
        if not preds:
            raise VlmadError("normalize_scores_transductive() got no predictions")
        scores = torch.cat([p.image_scores for p in preds]).float()
        maps = torch.cat([p.anomaly_maps for p in preds])
        map_max = torch.cat([_get(p, "map_max", lambda p: p.anomaly_maps.flatten(1).amax(1)) for p in preds]).float()
        cls = torch.cat(
            [_get(p, "cls_scores", lambda p: 2 * p.image_scores - p.anomaly_maps.flatten(1).amax(1)) for p in preds]
        ).float()
        if self._k == 0:
            return AprilGanPrediction(scores, maps, cls, map_max)
        lo, hi = map_max.min(), map_max.max()
        norm = (map_max - lo) / (hi - lo) if hi > lo else torch.zeros_like(map_max)
        return AprilGanPrediction(0.5 * (cls + norm), maps, cls, map_max)

    def export_module(self) -> nn.Module:
        """This detector (text, heads and memory bank included) as one traceable graph, for `vlmad export`.

        The transductive score uses the whole test set, which a per-request graph cannot see: refused."""
        if self.text_embeddings is None:
            raise NotReadyError("export before setup(class_name)", "call setup() with the object class name first")
        if self.transductive:
            raise VlmadError(
                "a transductive detector cannot be exported (its score needs the whole test set)",
                "export the detector without transductive=True",
            )
        from vlmad.methods.aprilgan_export import AprilGanGraph

        return AprilGanGraph(self, LOGIT_SCALE).eval()

    # ------------------------------------------------------------------ internals
    @torch.inference_mode()
    def _predict_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        bb = self.backbone
        size = int(batch.shape[-1])
        text = self.text_embeddings.to(bb.device)
        tokens, pooled = patch_tokens(bb, batch, self.stages)
        cls = image_scores(pooled, text)
        projected = self.heads(tokens)
        maps = torch.stack(stage_probabilities(projected, text, self.grid, size)).sum(0)
        scores = cls
        if self._k:
            dist = sum(
                min_cosine_distance(t, bank, self.assoc_max_elems, bank_normalized=True)
                for t, bank in zip(tokens, self._banks, strict=True)
            )
            maps = maps + upsample_grid(dist, self.grid, size)
        map_max = maps.flatten(1).amax(1)
        if self._k:
            scores = 0.5 * (cls + map_max)
        return scores.float().cpu(), maps.float().cpu(), cls.float().cpu(), map_max.float().cpu()


def _get(pred: Prediction, attr: str, fallback) -> torch.Tensor:
    value = getattr(pred, attr, None)
    return value if value is not None else fallback(pred)


def class_text_embeddings(
    backbone: ClipBackbone, prompt_set: PromptSet, name: str, cache: TextEmbeddingCache | None = None
) -> torch.Tensor:
    """(2, E) normalised ensemble text embeddings of one object name (through the on-disk cache)."""
    normal, anomalous = prompt_set.build(name)
    emb = (cache or TextEmbeddingCache()).embed(backbone, normal + anomalous)
    return ensemble_text(emb, len(normal)).to(backbone.device)


def backbone_kwargs_from_heads(heads: str | Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill backbone options the user left out from a heads sidecar (model, image size, activation, hub tag).

    ``create_detector("aprilgan", heads=PATH)`` then builds the backbone the heads were trained on; explicit
    options win (and a mismatch is reported when the heads are loaded).
    """
    from vlmad.training.heads_io import read_heads_meta

    meta = read_heads_meta(heads)
    bb = meta.get("backbone", {})
    out = dict(kwargs)
    if "model" not in out and bb.get("arch"):
        out["model"] = bb["arch"]
        out.setdefault("image_size", bb.get("image_size"))
        if bb.get("activation"):
            out.setdefault("quick_gelu", bb["activation"] == "QuickGELU")
        weights_given = any(out.get(k) not in (None, False) for k in ("pretrained", "checkpoint", "random_weights"))
        if not weights_given and bb.get("weights_kind") == "pretrained" and bb.get("pretrained"):
            out["pretrained"] = bb["pretrained"]
    return out
