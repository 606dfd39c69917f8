import pytest
import torch
import torch.nn.functional as F

from conftest import dense_kl
from distill import losses


def test_seed_worked_example_softmax_at_two_temperatures():
    z = torch.tensor([[2.9, 0.1, 0.23]])
    assert F.softmax(z / 1, 1)[0].tolist() == pytest.approx([0.885, 0.054, 0.061], abs=5e-4)
    assert F.softmax(z / 3, 1)[0].tolist() == pytest.approx([0.554, 0.218, 0.228], abs=5e-4)


def _topk_inputs(teacher: torch.Tensor, k: int, temperature: float):
    values, classes = teacher.topk(k, dim=1)
    return values, classes, torch.logsumexp(teacher / temperature, dim=1)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_topk_kl_with_all_classes_equals_dense_kl(temperature):
    torch.manual_seed(0)
    s, t = torch.randn(16, 10) * 3, torch.randn(16, 10) * 3
    dense = dense_kl(s, t, temperature)
    direct = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
    assert dense.item() == pytest.approx(direct.item(), rel=1e-6)
    assert losses.kl_topk(s, *_topk_inputs(t, 10, temperature), temperature).item() == pytest.approx(
        dense.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_topk_kl_matches_the_reconstructed_distribution(k):
    torch.manual_seed(1)
    temperature, c = 2.0, 10
    s, t = torch.randn(8, c) * 2, torch.randn(8, c) * 2
    values, classes, lse = _topk_inputs(t, k, temperature)
    q_top = (values / temperature - lse[:, None]).exp()
    rest = (1 - q_top.sum(1, keepdim=True)) / (c - k)
    q = rest.expand(-1, c).clone().scatter_(1, classes, q_top)  # top-k exact, the rest spread evenly
    assert torch.allclose(q.sum(1), torch.ones(8))
    direct = F.kl_div(F.log_softmax(s / temperature, 1), q, reduction="batchmean")
    assert losses.kl_topk(s, values, classes, lse, temperature).item() == pytest.approx(direct.item(), rel=1e-5)
