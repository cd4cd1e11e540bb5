# Copyright (c) lt_d2 contributors.
"""Every variant of the distribution-balanced loss function against values worked out with plain
Python math on a 3 x 3 batch, its closed-form gradient against finite differences, the module's
multi-hot input, and option checking."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from torch.nn import functional as F

from lt_d2.config import add_lt_config
from lt_d2.modeling.losses import DistributionBalancedLoss, distribution_balanced_loss
from lt_d2.modeling.losses.distribution_balanced import class_balanced_weights

# Three classes seen in 2, 10 and 50 of 100 training images; the third sample has no positive
# label (as a background RoI in detection).
FREQ = [2.0, 10.0, 50.0]
NUM_SAMPLES = 100
LOGITS = [[0.5, -1.0, 2.0], [-0.3, 0.8, -1.5], [1.2, 0.1, -0.7]]
TARGETS = [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
# Turns off every part of the loss; each test switches on the parts of its variant.
PLAIN = dict(reweight="none", focal=False, neg_scale=1.0, init_bias=0.0)


def loss_of(**options):
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    targets = torch.tensor(TARGETS, dtype=torch.float64)
    freq = torch.tensor(FREQ, dtype=torch.float64)
    return distribution_balanced_loss(logits, targets, freq, NUM_SAMPLES, **options).item()


def expected(weights, neg_scale=1.0, init_bias=0.0, focal=False, gamma=2.0, balance=2.0,
             bias_bug=True):
    """Mean over the 9 elements of the official formula, written out per element.

    weights: a per-element weight w[k][i] (before negative-tolerant regularisation)."""
    total = 0.0
    for k in range(3):
        for i in range(3):
            y, w = TARGETS[k][i], weights[k][i]
            bias = -math.log(NUM_SAMPLES / FREQ[i] - 1) * init_bias
            if bias_bug:
                bias /= neg_scale
            s = LOGITS[k][i] + bias
            if y == 0:
                s, w = s * neg_scale, w / neg_scale
            ce = math.log(1 + math.exp(-s)) if y == 1 else math.log(1 + math.exp(s))
            if focal:
                total += balance * (1 - math.exp(-ce)) ** gamma * w * ce
            else:
                total += w * ce
    return total / 9


def per_class(values):
    return [list(values) for _ in range(3)]


def per_sample(values):
    return [[v] * 3 for v in values]


ONES = per_class([1.0, 1.0, 1.0])


def cb(n, beta=0.9):
    return (1 - beta) / (1 - beta ** n)


# N_train / n_i = 100/2, 100/10, 100/50
INV = [50.0, 10.0, 2.0]
SQRT_INV = [math.sqrt(50.0), math.sqrt(10.0), math.sqrt(2.0)]
CB_BY_CLASS = [cb(2), cb(10), cb(50)]
# per sample from its positives: sample 0 has classes 0 and 2 (n = 2, 50), sample 1 class 1
# (n = 10), sample 2 none -> weight 1 - beta (as if of a class with unbounded count)
CB_AVERAGE_N = [cb((2 + 50) / 2), cb(10), 0.1]
CB_AVERAGE_W = [(cb(2) + cb(50)) / 2, cb(10), 0.1]
CB_MIN_N = [cb(2), cb(10), 0.1]


def rebalanced(alpha, beta, mu):
    """alpha + sigmoid(beta (r - mu)), r_ki = (1/n_i) / sum over sample k's positives of 1/n_j."""
    out = []
    for row in TARGETS:
        repeat_rate = sum(y / n for y, n in zip(row, FREQ))
        r = [(1 / n) / repeat_rate if repeat_rate else math.inf for n in FREQ]
        out.append([alpha + 1 / (1 + math.exp(-beta * (v - mu))) for v in r])
    return out


def test_hand_computed_rebalance_weights_spot_check():
    w = rebalanced(0.1, 10.0, 0.2)
    # sample 1: r = (1/n_i) / (1/10) = 5, 1, 0.2 -> sigmoid(48), sigmoid(8), sigmoid(0) = 0.5
    assert w[1][2] == pytest.approx(0.6)
    assert w[1][1] == pytest.approx(0.1 + 1 / (1 + math.exp(-8)))
    # a sample without positives: r = inf, w = alpha + 1
    assert w[2] == [1.1, 1.1, 1.1]


def test_plain_bce_equals_torch_bce():
    logits, targets = torch.tensor(LOGITS), torch.tensor(TARGETS, dtype=torch.float32)
    ours = distribution_balanced_loss(logits, targets, torch.tensor(FREQ), NUM_SAMPLES, **PLAIN)
    assert torch.allclose(ours, F.binary_cross_entropy_with_logits(logits, targets))
    assert ours.item() == pytest.approx(expected(ONES), rel=1e-6)


def test_focal_only():
    options = {**PLAIN, "focal": True, "gamma": 2.0, "balance": 2.0}
    assert loss_of(**options) == pytest.approx(expected(ONES, focal=True), rel=1e-10)


@pytest.mark.parametrize("reweight, weights", [
    ("inv", per_class(INV)),
    ("sqrt_inv", per_class(SQRT_INV)),
    ("rebalance", rebalanced(0.1, 10.0, 0.2)),
])
def test_frequency_weights(reweight, weights):
    options = {**PLAIN, "reweight": reweight, "alpha": 0.1, "beta": 10.0, "mu": 0.2}
    assert loss_of(**options) == pytest.approx(expected(weights), rel=1e-10)


@pytest.mark.parametrize("mode, weights", [
    ("by_class", per_class(CB_BY_CLASS)),
    ("average_n", per_sample(CB_AVERAGE_N)),
    ("average_w", per_sample(CB_AVERAGE_W)),
    ("min_n", per_sample(CB_MIN_N)),
])
def test_class_balanced_modes(mode, weights):
    options = {**PLAIN, "reweight": "CB", "cb_beta": 0.9, "cb_mode": mode}
    assert loss_of(**options) == pytest.approx(expected(weights), rel=1e-10)


@pytest.mark.parametrize("mode", ["average_n", "average_w", "min_n"])
def test_class_balanced_sample_without_positives_weighs_one_minus_beta(mode):
    targets = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    w = class_balanced_weights(targets, torch.tensor(FREQ), 0.9, mode)
    assert w.shape == (2, 1)
    assert w[0].item() == pytest.approx(0.1) and w[1].item() == pytest.approx(cb(2))
    # beta = 0 weighs every sample 1, with or without positives
    assert torch.equal(class_balanced_weights(targets, torch.tensor(FREQ), 0.0, mode),
                       torch.ones(2, 1))


@pytest.mark.parametrize("fix_bug", [False, True])
def test_negative_tolerant_regularisation(fix_bug):
    options = {**PLAIN, "neg_scale": 2.0, "init_bias": 0.05, "fix_init_bias_bug": fix_bug}
    value = loss_of(**options)
    assert value == pytest.approx(expected(ONES, neg_scale=2.0, init_bias=0.05,
                                           bias_bug=not fix_bug), rel=1e-10)
    # the two biases differ by the factor lambda, so the losses differ
    other = expected(ONES, neg_scale=2.0, init_bias=0.05, bias_bug=fix_bug)
    assert value != pytest.approx(other, rel=1e-6)


@pytest.mark.parametrize("reweight, norm, weights", [
    # a (C,) weight: by_instance and by_batch both divide by its maximum, 50
    ("inv", "by_instance", per_class([1.0, 0.2, 0.04])),
    ("inv", "by_batch", per_class([1.0, 0.2, 0.04])),
    # an (N, 1) weight: by_instance divides each sample's weight by itself
    ("CB_average_w", "by_instance", ONES),
    ("CB_min_n", "by_batch", per_sample([1.0, cb(10) / cb(2), 0.1 / cb(2)])),
    # an (N, C) weight: each row by its maximum, or all by the overall maximum
    ("rebalance", "by_instance", [[v / max(row) for v in row] for row in rebalanced(0.1, 10, 0.2)]),
    ("rebalance", "by_batch",
     [[v / max(map(max, rebalanced(0.1, 10, 0.2))) for v in row]
      for row in rebalanced(0.1, 10, 0.2)]),
])
def test_weight_norm(reweight, norm, weights):
    reweight, _, cb_mode = reweight.partition("_")
    options = {**PLAIN, "reweight": reweight, "cb_mode": cb_mode or "average_w",
               "weight_norm": norm, "alpha": 0.1, "beta": 10.0, "mu": 0.2}
    assert loss_of(**options) == pytest.approx(expected(weights), rel=1e-10)


@pytest.mark.parametrize("fix_bug", [False, True])
def test_full_db_loss(fix_bug):
    """rebalance + negative-tolerant regularisation + focal, the COCO-MLT configuration."""
    options = dict(alpha=0.1, beta=10.0, mu=0.2, neg_scale=2.0, init_bias=0.05, gamma=2.0,
                   balance=2.0, fix_init_bias_bug=fix_bug)
    value = loss_of(**options)  # the defaults: reweight "rebalance", focal on
    assert value == pytest.approx(expected(rebalanced(0.1, 10.0, 0.2), neg_scale=2.0,
                                           init_bias=0.05, focal=True, bias_bug=not fix_bug),
                                  rel=1e-10)


def test_no_reweighting_with_regularisation_weighs_negatives_one_over_lambda():
    """The official code fails here (weight None); we take the weight as 1."""
    options = {**PLAIN, "neg_scale": 5.0, "focal": True}
    assert loss_of(**options) == pytest.approx(expected(ONES, neg_scale=5.0, focal=True), rel=1e-10)


@pytest.mark.parametrize("options", [
    dict(),  # the full DB loss
    dict(reweight="none", neg_scale=1.0, init_bias=0.0, focal=False),
    dict(reweight="inv", focal=False),
    dict(reweight="sqrt_inv", weight_norm="by_batch", gamma=1.5),
    dict(reweight="CB", cb_mode="average_n", fix_init_bias_bug=True),
    dict(reweight="CB", cb_mode="by_class", weight_norm="by_instance", neg_scale=5.0),
    dict(reweight="rebalance", weight_norm="by_instance", focal=False),
])
def test_closed_form_gradient_matches_finite_differences(options):
    torch.manual_seed(0)
    logits = (torch.randn(5, 4, dtype=torch.float64) * 2).requires_grad_()
    targets = (torch.rand(5, 4) > 0.6).double()
    targets[0] = 0  # a sample without positives
    freq = torch.tensor([3.0, 40.0, 7.0, 300.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: distribution_balanced_loss(x, targets, freq, 1000, **options), (logits,))


def test_module_multi_hot_targets_equal_the_function():
    torch.manual_seed(1)
    options = dict(reweight="CB", cb_mode="min_n", neg_scale=3.0, init_bias=0.1)
    freq = torch.tensor([5.0, 80.0, 1.0, 30.0])
    loss_fn = DistributionBalancedLoss(num_classes=4, image_count=freq, num_images=200, **options)
    assert DistributionBalancedLoss.multi_label is True
    logits, multi_hot = torch.randn(6, 4), torch.rand(6, 4) > 0.5
    ref = distribution_balanced_loss(logits, multi_hot.float(), freq, 200, **options)
    assert torch.allclose(loss_fn(logits, multi_hot.float()), ref)
    assert torch.allclose(loss_fn(logits, multi_hot), ref)  # bool targets
    # detection labels in [0, K]: one-hot rows, all-zero for the background (K)
    labels = torch.tensor([0, 3, 4, 2, 4, 1])
    one_hot = F.one_hot(labels, 5)[:, :4].float()
    assert torch.allclose(loss_fn(logits, labels),
                          distribution_balanced_loss(logits, one_hot, freq, 200, **options))
    with pytest.raises(ValueError, match="shape"):
        loss_fn(logits, multi_hot[:, :3])


def test_config_keys_reach_the_loss():
    cfg = add_lt_config(get_cfg())
    db = cfg.MODEL.LT.DB
    assert (db.REWEIGHT, db.CB_BETA, db.CB_MODE, db.WEIGHT_NORM) == ("rebalance", 0.9, "average_w",
                                                                     "none")
    db.REWEIGHT, db.CB_BETA, db.CB_MODE, db.WEIGHT_NORM = "CB", 0.99, "min_n", "by_batch"
    hparams = DistributionBalancedLoss(cfg, num_classes=3).hparams
    assert (hparams["reweight"], hparams["cb_beta"], hparams["cb_mode"],
            hparams["weight_norm"]) == ("CB", 0.99, "min_n", "by_batch")


@pytest.mark.parametrize("key, value", [
    ("REWEIGHT", "focal"), ("REWEIGHT", "cb"), ("CB_MODE", "max_n"), ("WEIGHT_NORM", "by_class"),
])
def test_bad_option_values_raise_naming_key_value_and_choices(key, value):
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.LT.DB[key] = value
    with pytest.raises(ValueError, match=rf"MODEL\.LT\.DB\.{key}.*'{value}'.*valid values: '"):
        DistributionBalancedLoss(cfg, num_classes=3)
    with pytest.raises(ValueError, match=rf"MODEL\.LT\.DB\.{key}"):
        distribution_balanced_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), 10,
                                   **{key.lower(): value})


def test_class_balanced_beta_must_be_below_one():
    with pytest.raises(ValueError, match="CB_BETA"):
        DistributionBalancedLoss(num_classes=3, reweight="CB", cb_beta=1.0)
    with pytest.raises(TypeError):  # a misspelt keyword fails at construction too
        DistributionBalancedLoss(num_classes=3, reweigh="CB")
