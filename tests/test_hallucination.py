# Copyright (c) lt_d2 contributors.
"""BACL's feature hallucination module: jitter geometry, statistics, sampling, state."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import get_cfg

from lt_d2.config import add_lt_config
from lt_d2.modeling.hallucination import HALLUCINATOR_REGISTRY, FeatureHallucinator, jitter_boxes


def test_jitter_signs_ranges_and_clipping():
    boxes = torch.tensor([[20.0, 30.0, 80.0, 60.0]])  # w 60, h 30
    out = jitter_boxes(boxes, (100, 100), generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 4)
    delta = out - boxes
    limits = torch.tensor([60.0, 30.0, 60.0, 30.0]) / 6
    assert torch.all(delta.abs() <= limits + 1e-5)
    # copy m moves x1, y1, x2, y2 by the bits of m: 0 -> all negative, 15 -> all positive
    assert torch.all(delta[0] <= 0) and torch.all(delta[15] >= 0)
    assert torch.all(delta[:8, 0] <= 0) and torch.all(delta[8:, 0] >= 0)
    assert torch.all(delta[0::2, 3] <= 0) and torch.all(delta[1::2, 3] >= 0)
    edge = jitter_boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), (10, 10))
    assert edge.min() >= 0 and edge.max() <= 10


def _module(**kw):
    args = dict(num_classes=4, feature_dim=3, momentum=0.1, num_sampled_classes=8, num_per_class=5)
    args.update(kw)
    return FeatureHallucinator(**args)


def test_first_statistics_then_exponential_moving_average():
    fh = _module()
    x1 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [5.0, 5.0, 5.0]])
    fh.update(x1, torch.tensor([0, 0, 2]))
    assert torch.allclose(fh.feature_mean[0], torch.tensor([2.0, 2.0, 2.0]))
    assert torch.allclose(fh.feature_var[0], torch.tensor([2.0, 0.0, 2.0]))  # unbiased
    assert torch.equal(fh.feature_var[2], torch.zeros(3))  # one sample: variance 0
    assert fh.feature_used.tolist() == [1, 0, 1, 0]
    x2 = torch.tensor([[3.0, 4.0, 5.0], [5.0, 4.0, 3.0]])
    fh.update(x2, torch.tensor([0, 0]))
    assert torch.allclose(fh.feature_mean[0], 0.1 * torch.tensor([4.0, 4.0, 4.0]) + 0.9 * 2.0)
    var = torch.tensor([2.0, 0.0, 2.0])
    assert torch.allclose(fh.feature_var[0], 0.1 * var + 0.9 * var)
    assert torch.allclose(fh.feature_mean[2], torch.tensor([5.0, 5.0, 5.0]))  # untouched


def test_class_sampling_follows_one_minus_accuracy():
    fh = _module(num_sampled_classes=20000)
    accuracy = torch.tensor([0.9, 0.5, 0.0, 1.0])
    drawn = fh.sample_classes(accuracy, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert torch.allclose(freq, torch.tensor([0.1, 0.5, 1.0, 0.0]) / 1.6, atol=0.01)
    assert fh.sample_classes(torch.ones(4)).shape == (20000,)  # all perfect: uniform, no NaN


def test_hallucinated_features_follow_the_class_gaussians():
    fh = _module(num_per_class=20000)
    fh.feature_mean[1] = torch.tensor([1.0, -2.0, 3.0])
    fh.feature_var[1] = torch.tensor([4.0, 1.0, 0.0])
    fh.feature_used[1] = 1
    feats, labels = fh.hallucinate(torch.tensor([1, 3]), generator=torch.Generator().manual_seed(1))
    assert labels.unique().tolist() == [1]  # class 3 has no statistics yet
    assert torch.allclose(feats.mean(0), fh.feature_mean[1], atol=0.05)
    assert torch.allclose(feats.var(0), fh.feature_var[1], atol=0.1)


def test_state_round_trips_and_config_builds_it():
    cfg = add_lt_config(get_cfg())
    fh = HALLUCINATOR_REGISTRY.get("FeatureHallucinator")(cfg, num_classes=4, feature_dim=3)
    assert (fh.num_sampled_classes, fh.num_per_class,
            fh.momentum, fh.sync_stats) == (8, 12, 0.1, True)
    fh.update(torch.randn(6, 3), torch.tensor([0, 1, 1, 2, 2, 2]))
    restored = _module()
    restored.load_state_dict(fh.state_dict())
    for name in ("feature_mean", "feature_var", "feature_used"):
        assert torch.equal(getattr(restored, name), getattr(fh, name))


def _worker(rank, init_file, out_dir, sync):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(12, 3, generator=g), torch.randint(0, 4, (12,), generator=g)
    fh = _module(sync_stats=sync)
    half = slice(rank * 6, rank * 6 + 6)
    fh.update(feats[half], labels[half])
    torch.save(fh.state_dict(), os.path.join(out_dir, f"{sync}_{rank}.pth"))
    dist.destroy_process_group()


@pytest.mark.parametrize("sync", [True, False])
def test_two_processes_share_statistics_when_synchronised(tmp_path, sync):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path), sync), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"{sync}_{r}.pth") for r in range(2)]
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(12, 3, generator=g), torch.randint(0, 4, (12,), generator=g)
    single = _module()
    single.update(feats, labels)
    same = all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    if sync:
        assert same
        assert all(torch.allclose(ranks[0][k], v, atol=1e-5)
                   for k, v in single.state_dict().items())
    else:
        assert not same  # the official behaviour: each rank keeps its own statistics


def test_roi_heads_feed_hallucinated_features_to_the_classifier_only():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import build_roi_heads
    from detectron2.utils.events import EventStorage

    from .test_box_predictor import STATS_DATASET, _cfg, _proposals_and_targets, setup_module

    setup_module()
    cfg = _cfg("FCBLLoss", "faster")
    cfg.MODEL.LT.HALLUCINATION.ENABLED = True
    cfg.MODEL.LT.HALLUCINATION.NUM_PER_CLASS = 3
    assert cfg.DATASETS.TRAIN == (STATS_DATASET,)
    torch.manual_seed(0)
    roi_heads = build_roi_heads(cfg, {"res4": ShapeSpec(channels=8, stride=16)})
    features = {"res4": torch.rand(2, 8, 2, 2)}
    proposals, gts = _proposals_and_targets()
    logits, labels = roi_heads.hallucinated_logits(features, gts)
    assert roi_heads.box_hallucinator.feature_used.tolist() == [0, 1, 0, 1]  # the gt classes
    # 8 classes drawn, 3 features each, those without statistics (0, 2) skipped
    assert len(labels) % 3 == 0 and 0 < len(labels) <= 8 * 3 and set(labels.tolist()) <= {1, 3}
    params = dict(roi_heads.named_parameters())
    grads = torch.autograd.grad(logits.sum(), list(params.values()), allow_unused=True)
    reached = sorted(n for n, g in zip(params, grads) if g is not None)
    assert reached == ["box_predictor.cls_score.bias", "box_predictor.cls_score.weight"]
    from detectron2.structures import ImageList

    images = ImageList(torch.rand(2, 3, 32, 32), [(32, 32), (32, 32)])
    with EventStorage():
        _, losses = roi_heads(images, features, proposals, gts)
    assert torch.isfinite(sum(losses.values()))
    assert not hasattr(roi_heads.box_predictor, "extra_classification")  # passed, not stored
    # FCBL counted the hallucinated rows in its confusion statistics as well
    assert roi_heads.box_predictor.cls_loss.num_gt.sum() > 2 * 2


def _build_heads(loss, arch):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads import build_roi_heads

    from .test_box_predictor import _cfg, setup_module

    setup_module()
    cfg = _cfg(loss, arch)
    cfg.MODEL.LT.HALLUCINATION.ENABLED = True
    return build_roi_heads(cfg, {"res4": ShapeSpec(channels=8, stride=16)})


def test_hallucination_needs_a_confusion_matrix():
    with pytest.raises(ValueError, match="FCBLLoss"):
        _build_heads("SigmoidCELoss", "faster")


def test_cascade_refuses_hallucination():
    with pytest.raises(ValueError, match="not for LTCascadeROIHeads"):
        _build_heads("FCBLLoss", "cascade")
