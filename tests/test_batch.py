"""The batch types (distill/data/batch.py): what each kind must carry is checked where it is built, consumers read
it by attribute, and accelerate moves a batch to the device like a tensor."""
import numpy as np
import pytest
import torch
from accelerate.utils import send_to_device

from distill import data
from distill.config import DataCfg
from distill.data import transforms
from distill.training import targets


def _record(n: int, partner: bool = True, **extra) -> dict:
    """One teacher's soft labels of n views, as an item field (softlabels.view_label's names)."""
    fields = {"logits": torch.randn(n, 2), "classes": torch.tensor([[0, 1]] * n), "target": torch.zeros(n),
              "mean": torch.zeros(n), "std": torch.ones(n), "lse_rest": torch.zeros(n), "lse_std_rest": torch.zeros(n)}
    return fields | ({"partner_target": torch.zeros(n)} if partner else {}) | extra


def _items(n: int, partner_target: bool = True) -> list[dict]:
    """ReplayItems-like items of mixed views (one teacher, data.renderer=cpu)."""
    return [{"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "label": i % 3, "index": i, "view_id": 1, "split": 0,
             "view": torch.zeros(6, dtype=torch.int64),
             "teachers": [{k: v[0] for k, v in _record(1, partner_target).items()}],
             "mixed": {"label": 2, "lam": 0.25, "box": torch.zeros(4, dtype=torch.int16), "index": 0,
                       "view": torch.zeros(6, dtype=torch.int64), "image": torch.ones(3, 4, 4, dtype=torch.uint8)}}
            for i in range(n)]


def test_collate_replay_builds_one_record_per_teacher_and_the_mixing():
    batch = data.collate_replay(_items(4) + [None])
    assert isinstance(batch, data.ReplayBatch) and int(batch.skipped) == 1 and batch.index.tolist() == [0, 1, 2, 3]
    assert len(batch.teachers) == 1 and batch.teachers[0].logits.shape == (4, 2)
    assert batch.mixed.label.tolist() == [2] * 4 and batch.mixed.lam.dtype == torch.float64  # as default_collate
    assert batch.mixed.image.shape == (4, 3, 4, 4)


def test_a_mixed_batch_whose_soft_labels_lack_the_partner_class_fails_where_it_is_built():
    """Before the batch types, a top-k teacher given such a batch silently left the partner class out."""
    with pytest.raises(data.BatchError, match="teacher 0's soft labels lack the partner class's logit"):
        data.collate_replay(_items(4, partner_target=False))
    with pytest.raises(data.BatchError, match="needs each partner's class"):
        data.ViewBatch(image=torch.zeros(2, 3, 4, 4), label=torch.zeros(2), index=torch.arange(2),
                       mixed=data.MixedView(lam=torch.ones(2), box=torch.zeros(2, 4)))
    with pytest.raises(data.BatchError, match="needs its pixels .image. or what renders them"):
        data.Views(view=torch.zeros(2, 6))  # no split, no index or JPEG files


def test_a_consumer_given_a_batch_without_its_part_says_which_part():
    plain = data.collate([{"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "label": 0, "index": 0}])
    with pytest.raises(data.BatchError, match="cached teacher 0 needs its soft labels in the batch"):
        targets.CachedTeacher(3, True, 1.0).log_probs(plain, None, 1.0, False)
    replay = data.collate_replay(_items(2))
    with pytest.raises(data.BatchError, match="cached teacher 1 needs its soft labels"):
        targets.CachedTeacher(3, True, 1.0, index=1).log_probs(replay, None, 1.0, False)
    with pytest.raises(data.BatchError, match="carry no pooled feature"):
        targets.CachedTeacher(3, True, 1.0).feature(replay, None)
    params = data.Views(view=torch.zeros(2, 6, dtype=torch.int16), split=torch.zeros(2), index=torch.arange(2))
    with pytest.raises(data.BatchError, match="without the device's renderers"):
        transforms.ToInput(DataCfg(), None, None)(params)


def test_send_to_device_moves_every_tensor_and_leaves_the_jpeg_files_on_the_host():
    items = _items(3)
    for it in items:
        it["teachers"][0]["feature"] = torch.ones(5)
        it["jpeg"] = np.zeros(7, dtype=np.uint8)
    batch = data.collate_replay(items)
    moved = send_to_device(batch, torch.device("meta"), non_blocking=True)
    assert type(moved) is data.ReplayBatch and moved.image.is_meta and moved.label.is_meta and moved.skipped.is_meta
    assert moved.mixed.image.is_meta and moved.mixed.lam.is_meta
    assert all(t.is_meta for t in (moved.teachers[0].logits, moved.teachers[0].feature, moved.teachers[0].target))
    assert len(moved.jpeg) == 3 and all(a is b for a, b in zip(moved.jpeg, batch.jpeg))  # numpy: not moved
    assert batch.image.device.type == "cpu"  # the batch itself is left as it was


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_the_loader_pins_every_tensor_of_a_batch():
    pinned = data.collate_replay(_items(2)).pin_memory()
    assert pinned.image.is_pinned() and pinned.mixed.image.is_pinned() and pinned.teachers[0].logits.is_pinned()
