import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.training import models, tricks
from distill.config import MixCfg, OptimCfg, SchedCfg
from distill.losses import soft_cross_entropy


def lrs(sched_cfg: SchedCfg, epochs: int, steps_per_epoch: int, steps: list[int]) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = tricks.build_optimizer(model, OptimCfg(), lr=0.1)
    schedule = tricks.build_schedule(opt, sched_cfg, epochs, steps_per_epoch)
    out = []
    for s in steps:
        schedule.step_update(s)
        assert len({g["lr"] for g in opt.param_groups}) == 1  # every group follows the schedule
        out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_then_cosine_exact_values():
    # 5 epochs x 10 steps, 1 warmup epoch from 0: warmup end = peak, cosine midpoint = half, end = min_lr
    got = lrs(SchedCfg(name="cosine", warmup_epochs=1, warmup_lr=0.0, min_lr=0.0), 5, 10, [0, 5, 10, 30, 50])
    assert got == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0], abs=1e-12)
    got = lrs(SchedCfg(name="cosine", warmup_epochs=0, min_lr=0.01), 4, 10, [0, 20, 40])
    assert got == pytest.approx([0.1, 0.055, 0.01], abs=1e-12)


def test_step_and_exponential_decay():
    assert lrs(SchedCfg(name="step", decay_epochs=2, decay_rate=0.1), 6, 10, [19, 20, 40]) == \
        pytest.approx([0.1, 0.01, 0.001])
    assert lrs(SchedCfg(name="exponential", decay_rate=0.5), 6, 10, [9, 10, 25]) == pytest.approx([0.1, 0.05, 0.025])


def test_lr_scales_with_global_batch():
    assert tricks.scaled_lr(0.1, 1024) == pytest.approx(0.4)
    assert tricks.scaled_lr(0.2, 128) == pytest.approx(0.1)


def test_label_smoothing_exact():
    t = tricks.smooth_one_hot(torch.tensor([0, 2]), 4, 0.1)
    assert torch.allclose(t, torch.tensor([[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]]))
    logits = torch.randn(2, 4)
    assert soft_cross_entropy(logits, t).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([0, 2]), label_smoothing=0.1).item(), rel=1e-6)


@pytest.mark.parametrize("mix_cfg", [MixCfg(mixup_alpha=0.4), MixCfg(cutmix_alpha=1.0),
                                     MixCfg(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5)])
def test_mixing_pixel_and_label_mass_equal_lambda(mix_cfg):
    b, h, w = 8, 16, 12
    x = torch.eye(b).view(b, b, 1, 1).expand(b, b, h, w).contiguous()  # image i lights only channel i
    y = torch.eye(b)  # one-hot of class i
    kinds = set()
    for seed in range(20):
        mix = tricks.draw_mix(np.random.default_rng(seed), mix_cfg, b, h, w)
        kinds.add(mix.box is None)
        xm, ym = tricks.mix_images(x, mix), tricks.mix_targets(y, mix)
        mass = xm.mean(dim=(2, 3))  # mass[i, j]: share of image j's pixels in mixed image i
        for i in range(b):
            j = int(mix.perm[i])
            own = mix.lam if j != i else 1.0
            assert mass[i, i].item() == pytest.approx(own, abs=1e-6)
            assert ym[i, i].item() == pytest.approx(own, abs=1e-6)
            assert mass[i, j].item() + (mass[i, i].item() if j != i else 0) == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(ym.sum(1), torch.ones(b))
    if mix_cfg.mixup_alpha and mix_cfg.cutmix_alpha:
        assert kinds == {True, False}  # both kinds were drawn


def test_mix_prob_zero_never_mixes():
    assert tricks.draw_mix(np.random.default_rng(0), MixCfg(mixup_alpha=1.0, prob=0.0), 4, 8, 8) is None
    assert tricks.draw_mix(np.random.default_rng(0), MixCfg(), 4, 8, 8) is None


def test_no_weight_decay_on_bias_and_norm():
    model = models.create("resnet8", num_classes=3)
    opt = tricks.build_optimizer(model, OptimCfg(weight_decay=5e-4), lr=0.1)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for name, p in model.named_parameters():
        if name.endswith("bias") or p.ndim == 1:
            assert id(p) in no_decay, name
        else:
            assert id(p) in decay, name
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    opt = tricks.build_optimizer(model, OptimCfg(decay_bias_norm=True), lr=0.1)
    assert all(g["weight_decay"] > 0 for g in opt.param_groups)


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam)])
def test_adam_family(name, cls):
    opt = tricks.build_optimizer(torch.nn.Linear(2, 2), OptimCfg(name=name, betas=[0.8, 0.99]), lr=1e-3)
    assert isinstance(opt, cls) and opt.defaults["betas"] == (0.8, 0.99)
    opt = tricks.build_optimizer(torch.nn.Linear(2, 2), OptimCfg(name=name, nesterov=False), lr=1e-3, use_sgd=True)
    assert isinstance(opt, torch.optim.SGD) and not opt.defaults["nesterov"]
