# Copyright (c) lt_d2 contributors.
"""Every registered loss under mixed precision (bfloat16 autocast on the CPU, float16 logits as
CUDA's autocast gives them) and on small or degenerate batches; the hallucinator and the
cosine / LWS classifiers under autocast."""
import pytest
import torch

from lt_d2.modeling.box_predictor import CosineLinear, LWSLinear
from lt_d2.modeling.hallucination import FeatureHallucinator
from lt_d2.modeling.losses import CLS_LOSS_REGISTRY, federated_classes


def build_loss(name, k):
    """The registered loss ``name`` for ``k`` classes, with long-tailed training statistics."""
    image_count = torch.tensor([300.0, 40.0, 5.0, 1.0, 2.0, 80.0])[:k]
    stats = {
        "FederatedLoss": dict(image_count=image_count, num_fed_classes=3),
        "EQLLoss": dict(image_count=image_count, num_images=1000, lambda_=0.01),
        "ACSLLoss": dict(frequency=["f", "c", "r", "r", "r", "c"][:k]),
        "DistributionBalancedLoss": dict(image_count=image_count, num_images=1000),
        "GroupSoftmaxLoss": dict(instance_count=[900, 60, 9, 1, 3, 200][:k]),
    }
    return CLS_LOSS_REGISTRY.get(name)(num_classes=k, **stats.get(name, {}))


NAMES = sorted(name for name, _ in CLS_LOSS_REGISTRY)


def _total(out):
    return sum(out.values()) if isinstance(out, dict) else out


def _state(loss_fn):
    return {k: v.clone() for k, v in loss_fn.state_dict().items()}


def _run(loss_fn, logits, labels, seed):
    """(loss, d loss / d logits in the logits' dtype) with the RNG at ``seed`` (ACSL, BAGS and
    the federated loss draw RoIs / classes)."""
    logits = logits.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    total = _total(loss_fn(logits, labels))
    total.backward()
    return total, logits.grad


# ---- mixed precision ------------------------------------------------------------------------

@pytest.mark.parametrize("low", ["bfloat16-autocast", "float16"])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_logits_give_the_float32_loss_gradient_and_state(name, low):
    """Three training steps, so that the state feeds back into the loss: loss, gradient and
    state equal the float32 computation on the rounded logits, and buffers stay float32."""
    k = 4
    reference, mixed = build_loss(name, k).train(), build_loss(name, k).train()
    dtype = torch.bfloat16 if low.startswith("bfloat16") else torch.float16
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        labels = torch.tensor([0, 1, 1, 2, 3, k, k, k, 0, k])
        logits = (torch.randn(len(labels), reference.num_logits, generator=gen) * 3).to(dtype)
        ref_loss, ref_grad = _run(reference, logits.float(), labels, seed=step)
        if low.startswith("bfloat16"):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, grad = _run(mixed, logits, labels, seed=step)
        else:  # what CUDA's float16 autocast hands the loss, outside autocast
            loss, grad = _run(mixed, logits, labels, seed=step)
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
        # the float32 gradient rounded once to the logits' dtype
        torch.testing.assert_close(grad, ref_grad.to(dtype), rtol=0, atol=0)
        for key, value in mixed.state_dict().items():
            assert value.dtype == reference.state_dict()[key].dtype, key
            if value.is_floating_point():
                assert value.dtype == torch.float32, key
            torch.testing.assert_close(value, reference.state_dict()[key], rtol=1e-6, atol=1e-6)


def test_hallucinator_folds_low_precision_features_in_float32():
    torch.manual_seed(0)
    features = torch.randn(40, 8).bfloat16()
    labels = torch.randint(0, 3, (40,))
    reference = FeatureHallucinator(num_classes=3, feature_dim=8)
    mixed = FeatureHallucinator(num_classes=3, feature_dim=8)
    for _ in range(2):
        reference.update(features.float(), labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed.update(features, labels)
    for key, value in mixed.state_dict().items():
        assert value.dtype == torch.float32, key
        torch.testing.assert_close(value, reference.state_dict()[key], rtol=1e-6, atol=1e-6)
    sampled, _ = mixed.hallucinate(torch.tensor([0, 2]))
    assert sampled.dtype == torch.float32 and torch.isfinite(sampled).all()


@pytest.mark.parametrize("layer_cls", [CosineLinear, LWSLinear])
def test_classifiers_train_under_autocast_within_bfloat16_precision(layer_cls):
    torch.manual_seed(0)
    layer = layer_cls(16, 5)
    torch.nn.init.normal_(layer.weight, std=0.01)
    x = torch.randn(12, 16).bfloat16()
    ref = layer(x.float())
    ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    # bfloat16 keeps 8 significant bits: relative error ~ 2^-8 per rounding, a few roundings
    scale = ref.detach().abs().max()
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=float(scale) * 2 ** -6)
    for n, p in layer.named_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
        g_scale = float(ref_grads[n].abs().max())
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=0, atol=g_scale * 2 ** -5)


def test_cosine_classifier_of_a_tiny_bfloat16_feature_is_finite():
    # |x| below bfloat16's resolution of eps: the norm in float32 keeps the cosine defined
    layer = CosineLinear(4, 3)
    x = torch.full((2, 4), 1e-30).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert torch.isfinite(out).all()


# ---- small and degenerate batches -----------------------------------------------------------

def _labels(case, k):
    return {
        "empty": torch.empty(0, dtype=torch.long),
        "all_background": torch.full((6,), k),
        "all_foreground": torch.arange(6) % k,
        "one_class": torch.zeros(5, dtype=torch.long),
        "mixed": torch.tensor([0, 1 % k, k, k, 0]),
    }[case]


CASES = [("empty", 4, 1.0), ("all_background", 4, 1.0), ("all_foreground", 4, 1.0),
         ("one_class", 4, 1.0), ("mixed", 4, 1e4), ("mixed", 4, -1e4), ("all_foreground", 4, 1e4),
         ("all_background", 4, -1e4), ("mixed", 1, 1.0), ("all_foreground", 1, 1.0),
         ("empty", 1, 1.0), ("mixed", 1, 1e4)]


def _unseen_state_unchanged(name, before, after, labels, k):
    """Buffers that describe classes the batch did not contain must not move."""
    absent = torch.ones(k + 1, dtype=torch.bool)
    absent[labels] = False
    if name == "SeesawLoss":
        assert torch.equal(after["cum_samples"][absent], before["cum_samples"][absent])
    if name == "FCBLLoss":
        assert torch.equal(after["cm_numerator"][absent[:k]], before["cm_numerator"][absent[:k]])
        assert torch.equal(after["num_gt"][absent[:k]], before["num_gt"][absent[:k]])
    if name == "EQLv2Loss":  # positives only from present classes
        assert torch.equal(after["pos_grad"][absent[:k]], before["pos_grad"][absent[:k]])


@pytest.mark.parametrize("case, k, scale", CASES, ids=[f"{c}-K{k}-{s:g}" for c, k, s in CASES])
@pytest.mark.parametrize("name", NAMES)
def test_degenerate_batches_give_finite_loss_and_gradient(name, case, k, scale):
    loss_fn = build_loss(name, k).train()
    # a state that is not the initial one, so that "unchanged" means something
    warm = torch.tensor([0, k, k, 0] if k == 1 else [0, 1, 2, k, k, 3 % k])
    loss_fn(torch.randn(len(warm), loss_fn.num_logits), warm)
    before = _state(loss_fn)
    labels = _labels(case, k)
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(len(labels), loss_fn.num_logits, generator=gen).sign() * scale
    loss, grad = _run(loss_fn, logits, labels, seed=0)
    assert torch.isfinite(loss), loss
    assert grad is not None and grad.shape == logits.shape and torch.isfinite(grad).all()
    after = _state(loss_fn)
    if case == "empty":
        assert loss.item() == 0
        for key in before:
            assert torch.equal(after[key], before[key]), key  # nothing seen, nothing changes
    _unseen_state_unchanged(name, before, after, labels, k)


@pytest.mark.parametrize("name", NAMES)
def test_state_is_frozen_in_eval_mode(name):
    loss_fn = build_loss(name, 4).train()
    loss_fn(torch.randn(6, loss_fn.num_logits), torch.tensor([0, 1, 2, 3, 4, 4]))
    before = _state(loss_fn)
    loss_fn.eval()(torch.randn(6, loss_fn.num_logits), torch.tensor([0, 1, 2, 3, 4, 4]))
    for key, value in _state(loss_fn).items():
        assert torch.equal(value, before[key]), key


def test_federated_loss_takes_every_class_when_all_are_in_the_batch():
    k = 4
    loss_fn = build_loss("FederatedLoss", k)
    loss_fn.num_fed_classes = 50  # K <= FED_LOSS_NUM_CLASSES: the documented small-set case
    labels = torch.tensor([0, 1, 2, 3, k])
    logits = torch.randn(5, k + 1, requires_grad=True)
    loss = loss_fn(logits, labels)
    targets = torch.nn.functional.one_hot(labels, k + 1)[:, :k].float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, :k], targets, reduction="sum") / 5
    torch.testing.assert_close(loss, expected)
    assert federated_classes(labels, torch.ones(k), 50).tolist() == [1.0] * k
    # fewer candidates than wanted, some present: all of them, without a draw
    state = torch.get_rng_state()
    assert federated_classes(torch.tensor([1]), torch.ones(k), 50).tolist() == [1.0] * k
    assert torch.equal(torch.get_rng_state(), state)


def test_federated_loss_does_not_draw_on_an_empty_batch():
    loss_fn = build_loss("FederatedLoss", 4)
    logits = torch.randn(0, 5, requires_grad=True)
    state = torch.get_rng_state()
    loss = loss_fn(logits, torch.empty(0, dtype=torch.long))
    assert torch.equal(torch.get_rng_state(), state)
    assert loss.item() == 0
    loss.backward()
    assert logits.grad.shape == (0, 5)


def test_eqlv2_keeps_the_initial_ratio_of_classes_that_got_no_gradient():
    loss_fn = build_loss("EQLv2Loss", 4).train()
    loss_fn(torch.randn(0, 5), torch.empty(0, dtype=torch.long))
    assert torch.all(loss_fn.pos_neg == 100)  # not 0 / 1e-10 = 0
    logits = torch.randn(3, 5)
    loss_fn(logits, torch.tensor([0, 4, 4]))
    # every class got a negative gradient: the official ratio pos / (neg + 1e-10) everywhere
    torch.testing.assert_close(loss_fn.pos_neg, loss_fn.pos_grad / (loss_fn.neg_grad + 1e-10))
