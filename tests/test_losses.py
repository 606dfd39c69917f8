"""The pure losses against each paper's formula written out here, on dense logits, and the top-k soft target."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import dense_kl
from distill import losses, targets


def test_seed_worked_example_softmax_at_two_temperatures():
    z = torch.tensor([[2.9, 0.1, 0.23]])
    assert F.softmax(z / 1, 1)[0].tolist() == pytest.approx([0.885, 0.054, 0.061], abs=5e-4)
    assert F.softmax(z / 3, 1)[0].tolist() == pytest.approx([0.554, 0.218, 0.228], abs=5e-4)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_equals_torch_kl_div(temperature):
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10) * 3
    q = F.softmax(t / temperature, 1)
    direct = F.kl_div(F.log_softmax(s / temperature, 1), q, reduction="batchmean")
    assert losses.kl_probs(s, q, temperature).mean().item() == pytest.approx(direct.item(), rel=1e-5)
    assert dense_kl(s, t, temperature).item() == pytest.approx(direct.item(), rel=1e-5)


def test_standardize_is_the_z_score_with_the_unbiased_std():
    z = torch.tensor([[2.9, 0.1, 0.23, -1.0]])
    mean, std = z.mean().item(), float(np.std(z.numpy(), ddof=1))
    assert losses.standardize(z)[0].tolist() == pytest.approx([(v - mean) / std for v in z[0].tolist()], rel=1e-5)


def _dkd_by_the_paper(s, t, target, temperature):
    """DKD written out class by class: b = [p_target, 1 - p_target]; p-hat = p over the non-target classes,
    renormalised. TCKD = KL(b_T || b_S), NCKD = KL(p-hat_T || p-hat_S)."""
    ps, pt = F.softmax(s / temperature, 1), F.softmax(t / temperature, 1)
    tckd, nckd = [], []
    for i, y in enumerate(target.tolist()):
        bs = torch.stack([ps[i, y], 1 - ps[i, y]])
        bt = torch.stack([pt[i, y], 1 - pt[i, y]])
        tckd.append((bt * (bt / bs).log()).sum())
        rest = [c for c in range(s.shape[1]) if c != y]
        hs, ht = ps[i, rest] / ps[i, rest].sum(), pt[i, rest] / pt[i, rest].sum()
        nckd.append((ht * (ht / hs).log()).sum())
    return torch.stack(tckd), torch.stack(nckd)


@pytest.mark.parametrize("classes", [10, 2])
def test_dkd_equals_the_papers_formula_and_has_no_non_target_term_with_two_classes(classes):
    torch.manual_seed(1)
    s, t = torch.randn(6, classes), torch.randn(6, classes) * 2
    target = torch.randint(0, classes, (6,))
    tckd, nckd = losses.dkd(s, F.softmax(t / 4.0, 1), target, 4.0)
    want_t, want_n = _dkd_by_the_paper(s, t, target, 4.0)
    assert torch.allclose(tckd, want_t, rtol=1e-4, atol=1e-6) and torch.allclose(nckd, want_n, rtol=1e-4, atol=1e-6)
    assert (nckd.abs() < 1e-6).all() if classes == 2 else (nckd > 0).all()
    assert (tckd > 0).all()


def test_dist_equals_pearson_correlations_of_rows_and_columns():
    torch.manual_seed(2)
    ps, pt = F.softmax(torch.randn(8, 5), 1), F.softmax(torch.randn(8, 5) * 2, 1)
    inter, intra = losses.dist(ps, pt)
    rows = np.mean([np.corrcoef(ps[i].numpy(), pt[i].numpy())[0, 1] for i in range(8)])
    cols = np.mean([np.corrcoef(ps[:, c].numpy(), pt[:, c].numpy())[0, 1] for c in range(5)])
    assert inter.item() == pytest.approx(1 - rows, rel=1e-4) and intra.item() == pytest.approx(1 - cols, rel=1e-4)


def _cache_batch(t, labels, k, temperature):
    """What a top-k cache stores for teacher logits t (as ReplayItems hands it to the loss)."""
    values, classes = t.topk(k, 1)
    z = losses.standardize(t)
    return {"kd_logits": values, "kd_classes": classes, "label": labels,
            "kd_lse": torch.logsumexp(t / temperature, 1), "kd_target": t.gather(1, labels[:, None])[:, 0],
            "kd_mean": t.mean(1), "kd_std": t.std(1), "kd_lse_std": torch.logsumexp(z / temperature, 1)}


@pytest.mark.parametrize("standardized", [False, True])
def test_a_top_k_cache_represents_the_top_k_and_the_true_class_exactly_and_spreads_the_rest(standardized):
    torch.manual_seed(3)
    t, labels, k, temperature = torch.randn(5, 10) * 3, torch.tensor([0, 9, 4, 4, 2]), 3, 2.0
    got = targets.CachedTeacher(10, dense=False, temperature=temperature).probs(
        _cache_batch(t, labels, k, temperature), None, temperature, standardized)
    full = F.softmax((losses.standardize(t) if standardized else t) / temperature, 1)
    for i in range(5):
        known = set(t[i].topk(k).indices.tolist()) | {int(labels[i])}
        rest = [c for c in range(10) if c not in known]
        for c in known:
            assert got[i, c].item() == pytest.approx(full[i, c].item(), rel=1e-5)
        assert torch.allclose(got[i, rest], full[i, rest].sum() / len(rest) * torch.ones(len(rest)), rtol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(5), atol=1e-6)
    dense = targets.CachedTeacher(10, dense=True, temperature=1.0).probs(
        _cache_batch(t, labels, 10, 1.0), None, temperature, standardized)
    assert torch.allclose(dense, full, atol=1e-6)  # every logit kept: the teacher's own distribution, any T


def test_focal_and_scale_balance():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3), torch.softmax(torch.randn(4, 3), 1)
    assert losses.focal(logits, target, 0.0).item() == pytest.approx(losses.soft_cross_entropy(logits, target).item())
    assert losses.focal(logits, target, 2.0).item() < losses.soft_cross_entropy(logits, target).item()
    a, b = torch.tensor(3.0, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    out = losses.combine(a * 2, b * 4, 0.9, "scale")
    out.backward()
    assert out.item() == pytest.approx(1.0) and a.grad.item() == pytest.approx(0.9 / 3) and \
        b.grad.item() == pytest.approx(0.1 / 0.5)
