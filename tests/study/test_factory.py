"""The study's detector factory: shared backbones and the APRIL-GAN stage subset."""

from __future__ import annotations

import torch

from vlmad.methods.aprilgan import AprilGan, ProjectionHeads
from vlmad.study import StudyDetectorFactory, restrict_stages
from vlmad.testing import random_images

TINY = {"model": "vlmad-tiny-vit", "random_weights": True}


def test_backbones_are_shared_between_variants():
    factory = StudyDetectorFactory()
    a = factory({"method": "winclip", "label": "a", "kwargs": {**TINY, "prompt_set": "winclip-paper"}})
    b = factory({"method": "winclip", "label": "b", "kwargs": {**TINY, "scales": [2]}})
    c = factory({"method": "aprilgan", "label": "c", "kwargs": {**TINY, "allow_untrained": True}})
    # same backbone options -> one load, even across methods (the tiny model has no per-method defaults)
    assert a.backbone is b.backbone is c.backbone and factory.loads == 1
    assert b.scales == (2,) and a.prompt_set.name == "winclip-paper"
    d = factory({"method": "winclip", "label": "d", "kwargs": {**TINY, "image_size": 96}})
    assert d.image_size == 96 and d.backbone is not a.backbone
    assert c.info().method == "aprilgan"


def test_stage_subset_equals_a_single_stage_model():
    factory = StudyDetectorFactory()
    full = factory({"method": "aprilgan", "label": "x", "kwargs": {**TINY, "allow_untrained": True}})
    one = factory(
        {"method": "aprilgan", "label": "y", "kwargs": {**TINY, "allow_untrained": True, "stage_subset": [2]}}
    )
    assert full.stages == (1, 2) and one.stages == (2,) and one.info().extra["stages"] == [2]
    bb = full.backbone
    head = ProjectionHeads(bb.width, bb.embed_dim, 1)
    head.heads[0].load_state_dict(full.heads.heads[1].state_dict())
    ref = AprilGan(bb, heads=head, stages=[2])
    imgs = random_images(3, bb.image_size, seed=2)
    for det in (one, ref):
        det.setup("bottle")
    p1, p2 = one.predict(imgs), ref.predict(imgs)
    assert torch.allclose(p1.anomaly_maps, p2.anomaly_maps, atol=1e-6)
    assert torch.allclose(p1.image_scores, p2.image_scores, atol=1e-6)
    restrict_stages(full, [1])
    assert full.stages == (1,) and len(full.heads) == 1
