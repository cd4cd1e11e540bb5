# Copyright (c) lt_d2 contributors.
"""Classification losses: degenerate cases, hand-computed values, state, edge cases."""
import math

import pytest
import torch
from torch.nn import functional as F

from lt_d2.modeling.losses import (
    ACSLLoss,
    DistributionBalancedLoss,
    EQLLoss,
    EQLv2Loss,
    FCBLLoss,
    FederatedLoss,
    GroupSoftmaxLoss,
    SeesawLoss,
    SigmoidCELoss,
    SoftmaxCELoss,
    acsl_weights,
    distribution_balanced_loss,
    eql_loss,
    fcbl_loss,
    federated_classes,
    seesaw_loss,
    sigmoid_ce_loss,
)

K = 4
IMAGE_COUNT = torch.tensor([300.0, 40.0, 5.0, 1.0])
FREQUENCY = ["f", "c", "r", "r"]


def make_losses():
    return {
        "SoftmaxCELoss": SoftmaxCELoss(num_classes=K),
        "SigmoidCELoss": SigmoidCELoss(num_classes=K),
        "FederatedLoss": FederatedLoss(num_classes=K, image_count=IMAGE_COUNT, num_fed_classes=3),
        "EQLLoss": EQLLoss(num_classes=K, image_count=IMAGE_COUNT, num_images=1000, lambda_=0.01),
        "EQLv2Loss": EQLv2Loss(num_classes=K),
        "ACSLLoss": ACSLLoss(num_classes=K, frequency=FREQUENCY),
        "SeesawLoss": SeesawLoss(num_classes=K),
        "DistributionBalancedLoss": DistributionBalancedLoss(
            num_classes=K, image_count=IMAGE_COUNT, num_images=1000),
        "FCBLLoss": FCBLLoss(num_classes=K),
        "GroupSoftmaxLoss": GroupSoftmaxLoss(num_classes=K, instance_count=[900, 60, 9, 1]),
    }


def bce_sum(z, y):
    return -(y * math.log(torch.sigmoid(torch.tensor(z)).item())
             + (1 - y) * math.log(1 - torch.sigmoid(torch.tensor(z)).item()))


# ---- behaviour every loss shares --------------------------------------------------------------

@pytest.mark.parametrize("name", list(make_losses()))
def test_empty_background_and_extreme_batches_are_finite(name):
    loss_fn = make_losses()[name]
    cases = {
        "empty": torch.empty(0, dtype=torch.long),
        "background": torch.full((6,), K),
        "mixed": torch.tensor([0, 1, 2, 3, K, K]),
    }
    for case, labels in cases.items():
        for scale in (1.0, 1e4, -1e4):
            torch.manual_seed(0)
            logits = (torch.randn(len(labels), loss_fn.num_logits) * scale).requires_grad_()
            out = loss_fn(logits, labels)
            total = sum(out.values()) if isinstance(out, dict) else out
            total.backward()
            assert torch.isfinite(total), (case, scale)
            assert logits.grad is not None and torch.isfinite(logits.grad).all(), (case, scale)
            if case == "empty":
                assert total.item() == 0


@pytest.mark.parametrize("name", list(make_losses()))
def test_scores_have_background_last_and_are_probabilities(name):
    loss_fn = make_losses()[name]
    logits = torch.randn(7, loss_fn.num_logits)
    probs = loss_fn.probs(logits)
    assert probs.shape == (7, K + 1)
    assert (probs >= 0).all() and (probs <= 1).all()
    if name in ("SoftmaxCELoss", "SeesawLoss", "GroupSoftmaxLoss"):
        assert torch.allclose(probs.sum(1), torch.ones(7))


# ---- degenerate cases equal simpler losses ------------------------------------------------------

def test_softmax_ce_is_cross_entropy():
    logits, labels = torch.randn(5, K + 1), torch.tensor([0, 4, 2, 4, 1])
    ce = F.cross_entropy(logits, labels)
    assert torch.equal(SoftmaxCELoss(num_classes=K)(logits, labels), ce)


def test_sigmoid_ce_hand_computed():
    logits = torch.tensor([[0.5, -1.0, 2.0]])  # K=2: two classes + objectness
    loss = sigmoid_ce_loss(logits, torch.tensor([1]))
    assert loss.item() == pytest.approx(bce_sum(0.5, 0) + bce_sum(-1.0, 1) + bce_sum(2.0, 0), 1e-6)
    probs = SigmoidCELoss(num_classes=2).probs(logits)
    s = torch.sigmoid(logits[0])
    assert torch.allclose(probs[0], torch.stack([s[0] * (1 - s[2]), s[1] * (1 - s[2]), s[2]]))


def test_eql_with_lambda_zero_is_sigmoid_ce_over_classes():
    logits, labels = torch.randn(6, K), torch.tensor([0, 1, 2, 3, K, K])
    loss = EQLLoss(num_classes=K, image_count=IMAGE_COUNT,
                   num_images=1000, lambda_=0.0)(logits, labels)
    targets = F.one_hot(labels, K + 1)[:, :K].float()
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 6
    assert torch.allclose(loss, expected)


def test_eql_excludes_tail_negatives_of_foreground_rois_only():
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    tail = torch.tensor([0.0, 1.0])  # class 1 is a tail class
    loss = eql_loss(logits, torch.tensor([0, 2]), tail)  # a class-0 RoI and a background RoI
    expected = (bce_sum(0.3, 1) + 0  # the tail class is not pushed down by a foreground RoI
                + bce_sum(0.1, 0) + bce_sum(0.4, 0)) / 2  # background RoIs push down everything
    assert loss.item() == pytest.approx(expected, 1e-6)


def test_eqlv2_first_iteration_is_sigmoid_ce_and_state_follows_the_gradients():
    torch.manual_seed(1)
    logits, labels = torch.randn(8, K + 1), torch.tensor([0, 1, 1, 3, K, K, K, 2])
    loss_fn = EQLv2Loss(num_classes=K)
    first = loss_fn(logits, labels)
    assert torch.allclose(first, sigmoid_ce_loss(logits, labels), atol=1e-6)
    targets = F.one_hot(labels, K + 1).float()
    grad = (logits.sigmoid() - targets).abs()  # all weights were 1 in the first iteration
    assert torch.allclose(loss_fn.pos_grad, (grad * targets).sum(0)[:K])
    assert torch.allclose(loss_fn.neg_grad, (grad * (1 - targets)).sum(0)[:K])
    g = loss_fn.pos_grad / (loss_fn.neg_grad + 1e-10)
    q_neg = 1 / (1 + torch.exp(-12 * (g - 0.8)))
    q_pos = 1 + 4 * (1 - q_neg)
    weights = (torch.cat([q_pos, torch.ones(1)]) * targets
               + torch.cat([q_neg, torch.ones(1)]) * (1 - targets))
    second = loss_fn(logits, labels)
    expected = (F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none") * weights).sum() / 8
    assert torch.allclose(second, expected, atol=1e-6)


def test_eqlv2_state_is_frozen_in_eval_mode():
    loss_fn = EQLv2Loss(num_classes=K).eval()
    loss_fn(torch.randn(3, K + 1), torch.tensor([0, 1, K]))
    assert loss_fn.pos_grad.sum() == 0 and torch.all(loss_fn.pos_neg == 100)


def test_seesaw_with_p_q_zero_is_ce_plus_objectness():
    torch.manual_seed(2)
    logits, labels = torch.randn(6, K + 2), torch.tensor([0, 1, 3, K, K, 2])
    out = SeesawLoss(num_classes=K, p=0.0, q=0.0)(logits, labels)
    fg = labels < K
    assert torch.allclose(out["loss_cls"], F.cross_entropy(
        logits[fg, :K], labels[fg], reduction="sum") / 6)
    obj = F.cross_entropy(logits[:, K:], (labels == K).long(), reduction="sum") / 6
    assert torch.allclose(out["loss_cls_objectness"], obj)


def test_seesaw_factors_hand_computed():
    cum = torch.tensor([100.0, 10.0, 0.0])  # K=2 plus background
    logits = torch.tensor([[0.0, math.log(3.0), 5.0, 5.0]])  # class 0 RoI; class 1 scores 3x
    out = seesaw_loss(logits, torch.tensor([0]), cum, p=0.8, q=2.0)
    # mitigation (10/100)^0.8, compensation (3/1)^2 on the logit of class 1
    adjusted = torch.tensor([[0.0, math.log(3.0) + math.log(0.1 ** 0.8 * 9)]])
    assert torch.allclose(out, F.cross_entropy(adjusted, torch.tensor([0])))


def test_seesaw_counts_before_the_loss():
    loss_fn = SeesawLoss(num_classes=K)
    loss_fn(torch.randn(4, K + 2), torch.tensor([0, 0, 2, K]))
    assert loss_fn.cum_samples.tolist() == [2, 0, 1, 0, 1]


def test_federated_class_set():
    weights = torch.tensor([1.0, 0.0, 4.0, 9.0])
    torch.manual_seed(0)
    mask = federated_classes(torch.tensor([0, K]), weights, num_fed_classes=3)
    assert mask.tolist() == [1, 0, 0, 1] or mask.tolist() == [1, 0, 1, 0]  # 0 present, +1 drawn
    assert mask[1] == 0  # weight 0 is never drawn
    full = federated_classes(torch.tensor([1]), torch.ones(K), num_fed_classes=K + 1)
    assert full.tolist() == [1] * K
    logits, labels = torch.randn(5, K + 1), torch.tensor([0, 1, 2, 3, K])
    loss = FederatedLoss(num_classes=K, image_count=torch.ones(K),
                         num_fed_classes=K + 1)(logits, labels)
    targets = F.one_hot(labels, K + 1)[:, :K].float()
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(
        logits[:, :K], targets, reduction="sum") / 5)


def test_acsl_weights_follow_the_official_rules():
    num_bg = 200
    labels = torch.cat([torch.tensor([1]), torch.full((num_bg,), K)])
    logits = torch.full((num_bg + 1, K + 1), -5.0)
    logits[0, 3] = 2.0  # the fg RoI scores class 3 above the threshold
    groups = {g: torch.tensor([f == g for f in FREQUENCY]) for g in ("r", "c", "f")}
    w = acsl_weights(logits, labels, groups, 0.7)
    assert w[0].tolist() == [0, 1, 0, 1, 0]  # label + confidently scored class
    bg = w[1:]
    assert torch.all(bg[:, K] == 1) and torch.all(bg[:, 0] == 1)  # background, frequent class
    assert bg[:, 1].sum() == int(num_bg * 0.1)  # common class on 10% of bg rows
    assert bg[:, 2].sum() == int(num_bg * 0.01) and bg[:, 3].sum() == int(num_bg * 0.01)
    assert torch.equal(bg[:, 2], bg[:, 3])  # one row draw per group


def test_distribution_balanced_terms_hand_computed():
    logits = torch.tensor([[0.4, -0.3]])
    targets = torch.tensor([[1.0, 0.0]])
    freq, n, a, b, mu, lam, kappa, gamma, bal = torch.tensor(
        [10.0, 40.0]), 100, 0.1, 10.0, 0.2, 2.0, 0.05, 2.0, 2.0
    options = dict(alpha=a, beta=b, mu=mu, neg_scale=lam, init_bias=kappa, gamma=gamma,
                   balance=bal)
    loss = distribution_balanced_loss(logits, targets, freq, n, **options)
    # r_k,i = (1/n_i) / (1/10): class 0 -> 1, class 1 -> 0.25
    w = [a + 1 / (1 + math.exp(-b * (1 - mu))), a + 1 / (1 + math.exp(-b * (0.25 - mu)))]
    bias = [-math.log(100 / 10 - 1) * kappa / lam, -math.log(100 / 40 - 1)
            * kappa / lam]  # official /lambda
    z_pos = 0.4 + bias[0]
    z_neg = lam * (-0.3 + bias[1])
    terms = []
    for z, y, weight in [(z_pos, 1, w[0]), (z_neg, 0, w[1] / lam)]:
        ce = bce_sum(z, y)
        terms.append(bal * (1 - math.exp(-ce)) ** gamma * weight * ce)
    assert loss.item() == pytest.approx(sum(terms) / 2, rel=1e-5)
    fixed = distribution_balanced_loss(logits, targets, freq, n, **options,
                                       fix_init_bias_bug=True)
    assert fixed.item() != pytest.approx(loss.item())


def test_distribution_balanced_without_its_parts_is_bce():
    logits, targets = torch.randn(5, 3), (torch.rand(5, 3) > 0.5).float()
    loss = distribution_balanced_loss(logits, targets, torch.tensor([5.0, 9.0, 2.0]), 20,
                                      neg_scale=1.0, init_bias=0.0, focal=False, reweight="none")
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, targets))


def test_fcbl_without_margin_or_reweighting_is_sigmoid_ce():
    torch.manual_seed(3)
    logits, labels = torch.randn(7, K + 1), torch.tensor([0, 1, 2, 3, K, K, 1])
    confusion = torch.rand(K, K)
    loss = fcbl_loss(logits, labels, confusion, torch.ones(K), alpha=0.0, reweight=False)
    assert torch.allclose(loss, sigmoid_ce_loss(logits, labels))


def test_fcbl_margins_weights_and_confusion_update():
    confusion = torch.tensor([[0.5, 0.2], [0.05, 0.9]])
    logits = torch.tensor([[0.0, 0.0, -3.0], [1.0, -2.0, 0.0]])
    labels = torch.tensor([0, 2])  # K=2: a class-0 RoI and a background RoI
    loss = fcbl_loss(logits, labels, confusion, torch.ones(2), alpha=0.85, prob_thresh=0.7,
                     reweight=True)
    m01 = 0.85 * math.log(0.2 / 0.05)
    # fg RoI: class 1 scores as much as the label -> weighted; objectness always weighted
    expected = (bce_sum(0.0, 1) + bce_sum(0.0 + m01, 0) + bce_sum(-3.0, 0)
                + bce_sum(1.0, 0) + bce_sum(-2.0, 0) + bce_sum(0.0, 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss_fn = FCBLLoss(num_classes=2)
    loss_fn(logits, labels)
    assert loss_fn.num_gt.tolist() == [1, 0]
    assert torch.allclose(loss_fn.cm_numerator[0], torch.tensor([0.5, 0.5]))
    assert torch.allclose(loss_fn.confusion[0], torch.tensor([0.5, 0.5]))
    assert torch.allclose(loss_fn.per_class_accuracy(), loss_fn.confusion.diagonal())


# ---- state ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, buffers", [
    (EQLv2Loss, ("pos_grad", "neg_grad", "pos_neg")),
    (SeesawLoss, ("cum_samples",)),
    (FCBLLoss, ("cm_numerator", "num_gt")),
])
def test_state_is_persistent_and_round_trips(cls, buffers):
    loss_fn = cls(num_classes=K)
    torch.manual_seed(4)
    for _ in range(3):
        loss_fn(torch.randn(10, loss_fn.num_logits), torch.randint(0, K + 1, (10,)))
    state = loss_fn.state_dict()
    assert set(buffers) <= set(state)
    restored = cls(num_classes=K)
    restored.load_state_dict(state)
    for name in buffers:
        assert torch.equal(getattr(restored, name), getattr(loss_fn, name))


def test_class_statistics_are_not_checkpointed():
    assert list(FederatedLoss(num_classes=K, image_count=IMAGE_COUNT).state_dict()) == []
    assert list(EQLLoss(num_classes=K, image_count=IMAGE_COUNT, num_images=9).state_dict()) == []


def test_missing_statistics_fail_with_the_fix():
    with pytest.raises(RuntimeError, match="DATASETS.TRAIN"):
        EQLLoss(num_classes=K)(torch.randn(2, K), torch.tensor([0, K]))


def _db_reference(logits, targets, freq, n, a, b, mu, lam, kappa, gamma, bal, focal):
    """The DB loss written out with autograd ops, as the official code computes it."""
    inv = 1 / freq
    w = a + torch.sigmoid(b * (inv[None, :] / (targets * inv[None, :]).sum(1, keepdim=True) - mu))
    bias = -torch.log(n / freq - 1) * kappa / lam
    z = logits + bias[None, :]
    z = z * lam * (1 - targets) + z * targets
    w = w / lam * (1 - targets) + w * targets
    bce = F.binary_cross_entropy_with_logits(z, targets, reduction="none")
    if not focal:
        return (w * bce).mean()
    return (bal * (1 - torch.exp(-bce)) ** gamma * w * bce).mean()


@pytest.mark.parametrize("focal", [True, False])
def test_distribution_balanced_gradient_matches_autograd(focal):
    torch.manual_seed(5)
    logits = torch.randn(6, 5, dtype=torch.float64) * 3
    targets = (torch.rand(6, 5) > 0.6).double()
    freq = torch.tensor([3.0, 50.0, 7.0, 200.0, 1.0], dtype=torch.float64)
    args = dict(alpha=0.1, beta=10.0, mu=0.3, neg_scale=5.0, init_bias=0.05, gamma=2.0, balance=2.0)
    x1 = logits.clone().requires_grad_()
    ours = distribution_balanced_loss(x1, targets, freq, 400, focal=focal, **args)
    ours.backward()
    x2 = logits.clone().requires_grad_()
    ref = _db_reference(x2, targets, freq, 400, 0.1, 10.0, 0.3, 5.0, 0.05, 2.0, 2.0, focal)
    ref.backward()
    assert torch.allclose(ours, ref, rtol=1e-5)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-4, atol=1e-9)


def test_fcbl_reads_the_confusion_matrix_from_its_running_sums():
    torch.manual_seed(6)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])  # K=2
    confusion = torch.rand(2, 2)
    counts = torch.tensor([2.0, 5.0])
    a = fcbl_loss(logits, labels, confusion, torch.ones(2))
    b = fcbl_loss(logits, labels, confusion * counts[:, None], counts)
    assert torch.allclose(a, b)


def test_sigmoid_losses_gradients_match_autograd_bce():
    torch.manual_seed(7)
    logits = (torch.randn(9, K + 1) * 4).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, K, K, 1, K, 0])
    sigmoid_ce_loss(logits, labels).backward()
    ref_logits = logits.detach().clone().requires_grad_()
    (F.binary_cross_entropy_with_logits(ref_logits, F.one_hot(labels, K + 1).float(),
                                        reduction="sum") / 9).backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)


def test_loss_benchmark_builds_every_registered_loss():
    import importlib.util
    import os

    from lt_d2.modeling.losses import CLS_LOSS_REGISTRY

    path = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "benchmark_losses.py")
    spec = importlib.util.spec_from_file_location("benchmark_losses", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stats = bench.lvis_like_stats(30)
    for name, _ in CLS_LOSS_REGISTRY:
        loss_fn = bench.build_loss(name, 30, stats)
        assert loss_fn(torch.randn(8, loss_fn.num_logits), torch.randint(0, 31, (8,))) is not None
