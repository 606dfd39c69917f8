import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from distill import config
from distill.training import models
from distill.stages import teacher
from distill.errors import CheckpointError, ConfigError


@pytest.mark.parametrize("name, millions", [("resnet8", 0.08), ("resnet20", 0.28), ("resnet56", 0.86),
                                            ("resnet110", 1.74), ("resnet8x4", 1.23), ("resnet32x4", 7.43)])
def test_cifar_resnets_are_timm_models(name, millions):
    assert name in timm.list_models()
    m = timm.create_model(name, num_classes=100)
    # parameter counts published for the RepDistiller/mdistiller CIFAR-100 models
    assert sum(p.numel() for p in m.parameters()) / 1e6 == pytest.approx(millions, abs=0.005)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 20000]


def test_kaiming_init_std():
    torch.manual_seed(0)
    model = models.create("resnet32x4", num_classes=10)
    models.init_weights(model, "kaiming", zero_gamma=False)
    for conv in _convs(model):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)


def test_xavier_and_orthogonal_init():
    model = models.create("resnet32x4", num_classes=10)
    models.init_weights(model, "xavier", zero_gamma=False)
    for conv in _convs(model):
        k = conv.kernel_size[0] * conv.kernel_size[1]
        fan_in, fan_out = conv.in_channels * k, conv.out_channels * k
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    models.init_weights(model, "orthogonal", zero_gamma=False)
    w = _convs(model)[-1].weight.flatten(1)  # rows <= cols: orthonormal rows
    assert torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-4)


def test_zero_gamma_on_last_bn_of_each_block():
    for name in ("resnet20", "resnet18"):  # ours and timm's own blocks
        model = models.create(name, num_classes=10)
        models.init_weights(model, "kaiming", zero_gamma=True)
        blocks = [m for m in model.modules() if hasattr(m, "zero_init_last")]
        assert blocks and all(b.bn2.weight.abs().sum() == 0 for b in blocks)
        assert all(b.bn1.weight.abs().sum() > 0 for b in blocks)


def _teacher_cfg(path: Path, model: str, finetune: int = 0):
    return config.validate({"teacher": {"source": "timm", "model": model, "checkpoint": str(path),
                                        "finetune": {"epochs": finetune}}})


@pytest.mark.parametrize("suffix, wrap", [(".safetensors", None), (".pth", None), (".pth.tar", "state_dict"),
                                          (".bin", "model")])
def test_local_checkpoint_gives_identical_logits(tmp_path, suffix, wrap):
    torch.manual_seed(0)
    original = timm.create_model("resnet10t", num_classes=3).eval()
    state = original.state_dict()
    path = tmp_path / f"teacher{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    model, epochs, _ = teacher.build(_teacher_cfg(path, "resnet10t"), num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), original(x))
    assert epochs == 0


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": timm.create_model("resnet8", num_classes=3).state_dict(), "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused: loading it needs unsafe unpickling"):
        teacher.build(_teacher_cfg(path, "resnet8"), num_classes=3)
    assert not marker.exists()


def test_checkpoint_for_another_architecture_lists_keys(tmp_path):
    path = tmp_path / "r8.safetensors"
    save_file(timm.create_model("resnet8", num_classes=3).state_dict(), str(path))
    with pytest.raises(CheckpointError) as err:
        teacher.build(_teacher_cfg(path, "resnet14"), num_classes=3)
    msg = str(err.value)
    assert "does not fit resnet14: missing keys [stages.0.1.conv1.weight" in msg and "unexpected keys []" in msg


def test_other_class_count_needs_finetuning(tmp_path):
    source = timm.create_model("resnet8", num_classes=5)
    path = tmp_path / "r8.safetensors"
    save_file(source.state_dict(), str(path))
    with pytest.raises(ConfigError, match="teacher.finetune.epochs"):
        teacher.build(_teacher_cfg(path, "resnet8"), num_classes=3)
    model, epochs, lr = teacher.build(_teacher_cfg(path, "resnet8", finetune=2), num_classes=3)
    assert model.fc.out_features == 3 and epochs == 2 and lr == 0.01
    assert torch.equal(model.stem[0].weight, source.stem[0].weight)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        teacher.build(_teacher_cfg(tmp_path / "nope.pth", "resnet8"), num_classes=3)


def _with_running_stats(model):
    """BatchNorms with the statistics of a trained model (not the identity of a fresh one)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _batch_norms(model) -> int:
    """BatchNorms left in a traced model: as modules, or as calls (timm's BatchNormAct2d is traced through)."""
    calls = [n for n in model.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]
    return len(calls) + sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name, folds", [("resnet20", True), ("resnet18", True), ("mobilenetv3_small_100", False)])
def test_frozen_folds_batchnorm_and_computes_the_same_function(name, folds):
    torch.manual_seed(0)
    model = _with_running_stats(models.create(name, num_classes=10)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    n_before = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = models.frozen(model, "cpu")
    # every conv -> BatchNorm pair folded; timm's BatchNormAct2d (MobileNetV3) is not a pattern fx folds
    assert _batch_norms(folded) == (0 if folds else n_before) and n_before > 0
    with torch.no_grad():
        got = folded(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not folded.training


def test_frozen_keeps_a_model_fx_cannot_trace(caplog):
    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if y.sum() > 0 else -y

    model = _with_running_stats(Branchy())
    with caplog.at_level("INFO", logger="distill"):
        kept = models.frozen(model, "cpu")
    assert kept is model and not kept.training and "left unfolded" in caplog.text
