"""Each loss against a loop-written reference, forward and gradient, plus edge cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from ml_worker.losses import HierarchicalProxyLoss, PairLoss, ProxyAnchorLoss, SupConLoss, kmeans


def grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*tensors)
    value.backward()
    return value.detach(), [t.grad for t in tensors]


def test_pair_loss_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, generator=g)
    positive = torch.tensor([1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    hard = torch.tensor([0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)

    def reference(x):
        def bce(v, y):
            return -(y * F.logsigmoid(v) + (1 - y) * F.logsigmoid(-v))

        groups = {"pos": [], "hard": [], "easy": []}
        for k in range(len(x)):
            key = "pos" if positive[k] else ("hard" if hard[k] else "easy")
            groups[key].append(bce(x[k], float(positive[k])))
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return mean(groups["pos"]) + mean(groups["hard"]) + 0.5 * mean(groups["easy"])

    value, (grad,) = grads(lambda x: PairLoss(easy_weight=0.5)(x, positive, hard), logits)
    ref_value, (ref_grad,) = grads(reference, logits)
    assert torch.allclose(value, ref_value, atol=1e-5) and torch.allclose(grad, ref_grad, atol=1e-5)


def test_pair_loss_without_positives_or_negatives():
    logits = torch.zeros(3, requires_grad=True)
    none = torch.zeros(3, dtype=torch.bool)
    loss = PairLoss()(logits, none, none)  # only easy negatives
    assert math.isclose(loss.item(), 0.5 * math.log(2), rel_tol=1e-5)
    assert PairLoss()(logits[:0], none[:0], none[:0]).item() == 0.0


def proxy_anchor_reference(x, proxies, labels, margin, alpha):
    x, p = F.normalize(x, dim=1), F.normalize(proxies, dim=1)
    pos_terms, neg_terms = [], []
    for c in range(p.shape[0]):
        pos = [torch.exp(-alpha * (x[i] @ p[c] - margin)) for i in range(len(x)) if labels[i] == c]
        neg = [torch.exp(alpha * (x[i] @ p[c] + margin)) for i in range(len(x)) if labels[i] != c]
        if pos:
            pos_terms.append(torch.log(1 + sum(pos)))
        neg_terms.append(torch.log(1 + sum(neg)) if neg else torch.zeros(()))
    return sum(pos_terms) / len(pos_terms) + sum(neg_terms) / p.shape[0]


def test_proxy_anchor_matches_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 3, 3])  # class 2 has no sample
    loss = ProxyAnchorLoss(4, 5, margin=0.1, alpha=8.0)
    proxies = loss.proxies.detach().clone()
    value, (gx, gp) = grads(lambda a, p: loss(a, labels, p), x, proxies)
    ref, (rx, rp) = grads(lambda a, p: proxy_anchor_reference(a, p, labels, 0.1, 8.0), x, proxies)
    assert torch.allclose(value, ref, atol=1e-4)
    assert torch.allclose(gx, rx, atol=1e-4) and torch.allclose(gp, rp, atol=1e-4)


def test_proxy_anchor_with_one_class():
    loss = ProxyAnchorLoss(1, 4)
    value = loss(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    assert torch.isfinite(value)


def test_hierarchical_loss_is_the_weighted_sum_of_levels():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, generator=g)
    fine, coarse = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 0, 1, 1])
    h = HierarchicalProxyLoss([3, 2], 4, weights=[1.0, 0.5])
    expected = h.levels[0](x, fine) + 0.5 * h.levels[1](x, coarse)
    assert torch.allclose(h(x, [fine, coarse]), expected)


def test_kmeans_levels_average_the_assigned_fine_proxies():
    h = HierarchicalProxyLoss([4, 2], 3, weights=[1.0, 1.0], kmeans_levels={1: 2})
    with torch.no_grad():
        h.levels[0].proxies.copy_(torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1.0], [0, 0.1, 0.9]]))
    h.refresh_kmeans(seed=0)
    assign = h.assign_1
    assert assign[0] == assign[1] and assign[2] == assign[3] and assign[0] != assign[2]
    x = torch.randn(4, 3)
    fine = torch.tensor([0, 1, 2, 3])
    members = F.one_hot(assign, 2).float()
    coarse_proxies = members.T @ h.levels[0].proxies / members.sum(0).unsqueeze(1)
    expected = h.levels[0](x, fine) + h.levels[1](x, assign[fine], coarse_proxies)
    assert torch.allclose(h(x, [fine]), expected)
    assert not h.levels[1].proxies.requires_grad


def test_kmeans_separates_clear_clusters():
    x = F.normalize(torch.tensor([[1.0, 0], [0.99, 0.1], [0, 1.0], [0.1, 0.99]]), dim=1)
    a = kmeans(x, 2, seed=3)
    assert a[0] == a[1] and a[2] == a[3] and a[0] != a[2]


def supcon_reference(a, b, positive, temperature, exclude=None):
    terms = []
    for i in range(len(a)):
        cols = [j for j in range(len(b)) if exclude is None or not exclude[i, j]]
        pos = [j for j in cols if positive[i, j]]
        if not pos:
            continue
        logits = {j: a[i] @ b[j] / temperature for j in cols}
        log_z = torch.logsumexp(torch.stack(list(logits.values())), 0)
        terms.append(-sum(logits[j] - log_z for j in pos) / len(pos))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("with_exclude", [False, True])
def test_supcon_matches_reference(with_exclude):
    g = torch.Generator().manual_seed(4)
    a = F.normalize(torch.randn(5, 3, generator=g), dim=1)
    b = F.normalize(torch.randn(5, 3, generator=g), dim=1)
    positive = torch.tensor(
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]],
        dtype=torch.bool,
    )
    exclude = torch.eye(5, dtype=torch.bool) if with_exclude else None
    value, (ga, gb) = grads(lambda x, y: SupConLoss(0.2)(x, y, positive, exclude=exclude), a, b)
    ref, (ra, rb) = grads(lambda x, y: supcon_reference(x, y, positive, 0.2, exclude), a, b)
    assert torch.allclose(value, ref, atol=1e-5)
    assert torch.allclose(ga, ra, atol=1e-5) and torch.allclose(gb, rb, atol=1e-5)


def test_supcon_without_any_positive_is_zero():
    a = torch.randn(3, 2)
    assert SupConLoss()(a, a, torch.zeros(3, 3, dtype=torch.bool)).item() == 0.0
