"""Token distillation (DeiT, kd.token=soft|hard) for timm's students with a distillation head: the class head learns
from the labels, the distillation head from the teacher, and the model is evaluated and exported as their mean."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import cache_overrides, labelled, run_here, tiny_overrides
from distill.config import KDCfg
from distill.training import objectives

VIT = "student.model_args={img_size: 12, patch_size: 4, depth: 1, embed_dim: 24, num_heads: 2}"
DEIT = "deit_tiny_distilled_patch16_224"


class _Fixed:
    sees_mixed_input = False

    def __init__(self, logits):
        self.logits = logits

    def log_probs(self, batch, x, temperature, standardized):
        return torch.log_softmax(self.logits / temperature, 1)


@pytest.mark.parametrize("token", ["soft", "hard"])
def test_the_class_head_learns_the_labels_and_the_distillation_head_the_teacher(token):
    """DeiT's objective, written out: (1 - alpha) CE(class head, y) + alpha * (T^2 KL(q_T || p_T) of the
    distillation head (soft), or CE(distillation head, argmax q) (hard))."""
    g = torch.Generator().manual_seed(0)
    cls, dist, teacher = (torch.randn(8, 5, generator=g, dtype=torch.float64) for _ in range(3))
    labels = torch.arange(8) % 5
    kd = KDCfg(alpha=0.5, temperature=4.0, token=token)
    got = objectives.objective_for(kd, 5, 0.0, _Fixed(teacher))((cls.float(), dist.float()), labelled(labels), None,
                                                                 None, objectives.Progress(0, 0))
    if token == "soft":
        q = torch.softmax(teacher / 4.0, 1)
        term = 16.0 * (q * (q.log() - torch.log_softmax(dist / 4.0, 1))).sum(1).mean()
    else:
        term = F.cross_entropy(dist, teacher.argmax(1))
    want = 0.5 * F.cross_entropy(cls, labels) + 0.5 * term
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-5)
    assert got["ce"].item() == pytest.approx(F.cross_entropy(cls, labels).item(), rel=1e-5)


def test_token_distillation_asks_for_a_distillation_head(parquet_file, tmp_path):
    r = run_here(*tiny_overrides(parquet_file, tmp_path / "runs"), "kd.token=soft")
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: kd.token: student.model=resnet8 has no distillation head; timm's models with "
                           "one: deit_base_distilled_patch16_224, ") and DEIT in last
    r = run_here(*tiny_overrides(parquet_file, tmp_path / "runs"), "kd.token=hard", "kd.loss=dkd")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: kd.token: hard teaches the distillation head the teacher's class (kd.loss=hard); kd.loss=dkd "
        "teaches it with kd.token=soft")


def test_a_distilled_vit_trains_and_exports_its_averaged_heads_to_timm_and_onnx(shared, tmp_path, monkeypatch):
    import numpy as np
    import onnxruntime
    import timm

    import distill  # noqa: F401  (the CIFAR ResNets)
    seen, call = [], objectives.TokenObjective.__call__

    def recording(self, logits, *rest):  # what the student hands its objective at every step
        seen.append(type(logits))
        return call(self, logits, *rest)
    monkeypatch.setattr(objectives.TokenObjective, "__call__", recording)
    args = [a for a in cache_overrides(shared.data, tmp_path, shared.teacher_file) if a != "stage=cache"]
    r = run_here(*args, f"student.model={DEIT}", VIT, "student.init=timm", "student.zero_gamma=false",
                 "kd.token=hard", "kd.alpha=0.5", "student.epochs=1", "student.batch_size=16",
                 "student.baseline=false", "student.optim.name=adamw", "student.optim.lr=0.001")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "tiny"
    last = json.loads((run / "student" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"ce", "hard"} <= set(last["terms"])
    assert seen and set(seen) == {tuple}  # trained as (class head, distillation head), not their mean
    export = run / "export"
    model = timm.create_model(f"local-dir:{export}", pretrained=True).eval()  # rebuilt from config.json's model_args
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        tokens = model.forward_features(x)
        by_hand = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        assert torch.allclose(model(x), by_hand, atol=1e-6)
    session = onnxruntime.InferenceSession(str(export / "model.onnx"))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(onnx_out - by_hand.numpy()).max() < 1e-4
