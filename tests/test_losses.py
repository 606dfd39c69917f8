"""The distillation losses against float64 references written here from the papers' formulas, over the range users
reach: teacher confidence (the label's logit 0 to 40 above the rest, or a wrong class far ahead), T = 1, 2, 4, and
2 to 1,000 classes; through the public functions, a live teacher, a cache of every logit and the top-k cache's
reconstruction. Values and gradients agree to 1e-5 relative in float32; the caches' fp16 storage is compared on what
it stores, and its own error is stated separately."""
import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import labelled
from distill import data, losses, methods
from distill.store import softlabels
from distill.training import objectives, targets
from distill.config import KDCfg
from distill.methods.dkd import DKDSettings
from distill.registry import METHODS

TOL = 1e-5  # relative, float32 against float64
FP16_REL = 2.0 ** -11  # fp16's relative rounding (half an ulp): the cache's own error on each stored logit


# ---------------------------------------------------------------- float64 references, from the papers

def ref_kd(s, q, t):
    """Hinton: KL(q || p_T) * T^2, batch mean; q given as probabilities (float64)."""
    p = F.softmax(s / t, 1)
    return (q * (q.log() - p.log())).nan_to_num().sum(1).mean() * t * t


def ref_dkd(s, q, labels, t):
    """Zhao et al., eq. (1)-(4), class by class: b = [p_target, sum of the others]; p^ = the others renormalised."""
    p = F.softmax(s / t, 1)
    tckd, nckd = [], []
    for i, y in enumerate(labels.tolist()):
        rest = [c for c in range(s.shape[1]) if c != y]
        bp, bq = torch.stack([p[i, y], p[i, rest].sum()]), torch.stack([q[i, y], q[i, rest].sum()])
        tckd.append((bq * (bq / bp).log()).sum())
        hp, hq = p[i, rest] / p[i, rest].sum(), q[i, rest] / q[i, rest].sum()
        nckd.append((hq * (hq / hp).log()).nan_to_num().sum())
    return torch.stack(tckd).mean() * t * t, torch.stack(nckd).mean() * t * t


def _pearson(a, b, eps=1e-8):
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def ref_dist(s, q, t):
    """Huang et al.: 1 - mean Pearson correlation over samples (inter) and over classes (intra), times tau^2."""
    p = F.softmax(s / t, 1)
    return (1 - _pearson(p, q).mean()) * t * t, (1 - _pearson(p.t(), q.t()).mean()) * t * t


def ref_standardize(z):
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-7)


def ref_terms(method, s, q, labels, t):
    if method == "kd":
        return {"kd": ref_kd(s, q, t)}
    if method == "dkd":
        return dict(zip(("tckd", "nckd"), ref_dkd(s, q, labels, t)))
    return dict(zip(("inter", "intra"), ref_dist(s, q, t)))


WEIGHTS = {"kd": {}, "dkd": {"alpha": 1.0, "beta": 8.0}, "dist": {"beta": 2.0, "gamma": 2.0}}


def ref_loss(method, terms):
    if method == "kd":
        return terms["kd"]
    if method == "dkd":
        return terms["tckd"] + 8.0 * terms["nckd"]
    return 2.0 * terms["inter"] + 2.0 * terms["intra"]


# ---------------------------------------------------------------- inputs over the range users reach

def teacher_logits(batch, classes, gap, wrong, seed=0):
    """Random logits whose label (or, `wrong`, another class) is `gap` above the largest of the others."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, classes, (batch,), generator=g)
    lead = (labels + 1) % classes if wrong else labels
    others = z.scatter(1, lead[:, None], float("-inf")).max(1).values
    z[torch.arange(batch), lead] = others + gap
    return z, labels


def student_logits(batch, classes, seed=1):
    return torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def rel(got, want):
    """|got - want| / |want| for scalars; max abs difference / max abs reference for gradients."""
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def grad(fn, s):
    s = s.clone().requires_grad_(True)
    out = fn(s)
    out.backward()
    return out, s.grad


CASES = [(gap, False) for gap in (0, 5, 10, 20, 40)] + [(20, True)]


def _records(t32, labels, k, temperature):
    """One view per image as the cache stores it (softlabels.teacher_fields into the record dtype), read back as
    the student's loader hands it over (SoftLabels.view_label, collated)."""
    fields = softlabels.teacher_fields(t32, labels, None, k, temperature)
    rec = np.zeros(len(t32), dtype=softlabels.record_dtype(1, k, t32.shape[1]))
    for name, value in fields.items():
        rec[name][:, 0] = value.numpy()
    record = data.TeacherRecord(**torch.utils.data.default_collate([softlabels.SoftLabels.view_label(r, 0)
                                                                     for r in rec]))
    n = len(rec)
    return data.ReplayBatch(image=torch.zeros(n, 3, 1, 1, dtype=torch.uint8),
                            label=torch.tensor([int(y) for y in labels]), index=torch.arange(n),
                            view_id=torch.zeros(n, dtype=torch.long), teachers=[record])


def _stored(batch, classes, label_fp32=True):
    """The logits a record holds, in float64: the top k as fp16 values; the top-k reconstruction also reads the
    label's logit in fp32 over its copy (a cache of every logit reads the fp16 values alone)."""
    z, record = torch.zeros(len(batch.label), classes, dtype=torch.float64), batch.teachers[0]
    z.scatter_(1, record.classes, record.logits.double())
    if label_fp32:
        z.scatter_(1, batch.label[:, None], record.target.double()[:, None])
    return z


class _Model(torch.nn.Module):
    """A 'live teacher' that answers with fixed logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


@pytest.mark.parametrize("classes", [2, 10, 100, 1000])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("gap,wrong", CASES, ids=[f"{'wrong' if w else 'label'}+{g}" for g, w in CASES])
def test_every_method_is_exact_at_any_teacher_confidence(gap, wrong, temperature, classes):
    t64, labels = teacher_logits(8, classes, gap, wrong)
    s64, t32 = student_logits(8, classes), t64.float()
    dense = _records(t32, labels, classes, 1.0)  # a cache of every logit stores them at T = 1 and serves any T
    topk = _records(t32, labels, classes, temperature)  # k >= classes read through the top-k reconstruction
    # the storage's own error, stated: each stored logit is the teacher's rounded to fp16, nothing more
    assert (dense.teachers[0].logits.double().sort(1).values - t64.sort(1).values).abs().max() <= \
        FP16_REL * t64.abs().max() + 1e-12
    for method in ("kd", "dkd", "dist"):
        if method == "dist" and classes == 2 and gap == 0:
            continue  # a uniform two-class teacher: DIST's Pearson correlations are 0 / 0, no loss to compare
        for standardized in ((False, True) if method != "dist" else (False,)):
            kd_cfg = KDCfg(loss=method, temperature=temperature, alpha=1.0, dkd=DKDSettings(warmup=0),
                           logit_standardization=standardized)
            sources = {
                "public": (None, t64),
                "live": (targets.LiveTeacher(_Model(t32), contextlib.nullcontext), t64),
                "dense cache": (targets.CachedTeacher(classes, True, 1.0), _stored(dense, classes, label_fp32=False)),
                "top-k cache": (targets.CachedTeacher(classes, False, temperature), _stored(topk, classes)),
            }
            for where, (teacher, stored) in sources.items():
                z = ref_standardize(stored) if standardized else stored  # every class stored: its own z-score
                q = F.softmax(z / temperature, 1)
                sref = ref_standardize(s64) if standardized else s64
                want = ref_terms(method, sref, q, labels, temperature)
                batch = topk if where == "top-k cache" else dense
                for name in want:
                    def ours(s):
                        if teacher is None:
                            tt = losses.standardize(t32) if standardized else t32
                            ss = losses.standardize(s) if standardized else s
                            return getattr(losses, method)(ss, tt, *(
                                [labels] if method == "dkd" else []), temperature, **WEIGHTS[method])[name]
                        objective = objectives.objective_for(kd_cfg, classes, 0.0, teacher)
                        return objective(s, batch, None, None, objectives.Progress(epoch=0, step=0))[name]

                    def theirs(s):
                        ss = ref_standardize(s) if standardized else s
                        return ref_terms(method, ss, q, labels, temperature)[name]
                    value, g = grad(ours, s64.float())
                    value_ref, g_ref = grad(theirs, s64)
                    label = f"{method}{'+ls' if standardized else ''} {name} via {where}"
                    assert rel(value, value_ref) <= TOL, (label, value.item(), value_ref.item())
                    if classes == 2 and (standardized or name == "inter"):
                        # constant in the student here: two z-scored logits are +-1/sqrt(2), two 2-vectors correlate
                        # +-1; the gradient is the epsilons' alone (1e-7, 1e-8), below float32's resolution, four
                        # orders under the other terms' gradients
                        assert g.abs().max() <= 1e-4 and g_ref.abs().max() <= 1e-4, label
                    else:
                        assert rel(g, g_ref) <= TOL, (label, rel(g, g_ref))


@pytest.mark.parametrize("method", ["kd", "dkd", "dist"])
def test_the_public_functions_return_their_terms_and_the_weighted_loss(method):
    t64, labels = teacher_logits(6, 10, 5, False)
    s = student_logits(6, 10).float()
    extra = [labels] if method == "dkd" else []
    out = getattr(losses, method)(s, t64.float(), *extra, 4.0, **WEIGHTS[method])
    q = F.softmax(t64 / 4.0, 1)
    want = ref_terms(method, s.double(), q, labels, 4.0)
    assert set(out) == set(want) | {"loss"}
    assert rel(out["loss"], ref_loss(method, want)) <= TOL
    assert all(v.dim() == 0 for v in out.values())


def test_dkd_is_right_where_one_minus_q_in_float32_was_not():
    """The issue's case: the label's logit 18 above the others at T = 1 and 10 classes; q_target rounds to 1 in
    float32, and the old `1 - q_t` gave NCKD 111,530 for a reference of about 4."""
    t64, labels = teacher_logits(16, 10, 18, False, seed=3)
    assert (F.softmax(t64.float(), 1).gather(1, labels[:, None]) == 1.0).all()  # the probability has no digits left
    s = student_logits(16, 10, seed=4)
    got = losses.dkd(s.float(), t64.float(), labels, 1.0, 1.0, 8.0)
    tckd, nckd = ref_dkd(s, F.softmax(t64, 1), labels, 1.0)
    assert rel(got["nckd"], nckd) <= TOL and rel(got["tckd"], tckd) <= TOL
    assert 0.1 < nckd.item() < 20


def test_two_classes_have_no_non_target_term():
    t64, labels = teacher_logits(8, 2, 5, False)
    out = losses.dkd(student_logits(8, 2).float(), t64.float(), labels, 4.0, 1.0, 8.0)
    assert out["nckd"].item() == 0.0 and out["tckd"].item() > 0


def test_seed_worked_example_softmax_at_two_temperatures():
    z = torch.tensor([[2.9, 0.1, 0.23]])
    assert F.softmax(z / 1, 1)[0].tolist() == pytest.approx([0.885, 0.054, 0.061], abs=5e-4)
    assert F.softmax(z / 3, 1)[0].tolist() == pytest.approx([0.554, 0.218, 0.228], abs=5e-4)


def test_kd_equals_torch_kl_div_batchmean_times_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10) * 3
    direct = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    assert losses.kd(s, t, 4.0)["kd"].item() == pytest.approx(direct.item(), rel=1e-5)


def test_standardize_is_the_z_score_with_the_unbiased_std():
    z = torch.tensor([[2.9, 0.1, 0.23, -1.0]])
    mean, std = z.mean().item(), float(np.std(z.numpy(), ddof=1))
    assert losses.standardize(z)[0].tolist() == pytest.approx([(v - mean) / std for v in z[0].tolist()], rel=1e-5)


def test_dist_equals_pearson_correlations_of_rows_and_columns():
    torch.manual_seed(2)
    s, t = torch.randn(8, 5), torch.randn(8, 5) * 2
    out = losses.dist(s, t, 1.0, 1.0, 1.0)
    ps, pt = F.softmax(s, 1).numpy(), F.softmax(t, 1).numpy()
    rows = np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(8)])
    cols = np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(5)])
    assert out["inter"].item() == pytest.approx(1 - rows, rel=1e-4) and \
        out["intra"].item() == pytest.approx(1 - cols, rel=1e-4)


@pytest.mark.parametrize("standardized", [False, True])
@pytest.mark.parametrize("gap", [3, 40])
def test_a_top_k_cache_is_exact_on_what_it_stores_and_its_tail_mass_cannot_cancel(standardized, gap):
    """Top 3 of 100 classes: the top k and the label at their exact probability (from the stored values), the
    tail's mass from its own stored logsumexp, spread evenly. At gap 40 the tail is e^-40 of the mass: 1 - sum(q)
    would be 0 in float32; here it matches float64 to 1e-5."""
    t64, labels = teacher_logits(8, 100, gap, False, seed=5)
    temperature, k = 1.0, 3
    batch = _records(t64.float(), labels, k, temperature)
    log_q = targets.CachedTeacher(100, False, temperature).log_probs(batch, None, temperature, standardized)
    stored = _stored(batch, 100)
    z64 = (t64 - t64.mean(1, keepdim=True)) / (t64.std(1, keepdim=True) + 1e-7) if standardized else t64
    for i in range(8):
        known = sorted(set(batch.teachers[0].classes[i].tolist()) | {int(labels[i])})
        tail = [c for c in range(100) if c not in known]
        zi = stored[i, known]
        if standardized:
            zi = (zi - t64[i].float().double().mean()) / (t64[i].float().double().std() + 1e-7)
        tail_mass = torch.logsumexp(z64[i, tail] / temperature, 0)  # float64, from the teacher's own logits
        log_total = torch.logaddexp(torch.logsumexp(zi / temperature, 0), tail_mass)
        want = torch.full((100,), (tail_mass - np.log(len(tail)) - log_total).item(), dtype=torch.float64)
        want[known] = zi / temperature - log_total
        assert rel(log_q[i], want) <= TOL
        assert rel(log_q[i, tail].exp().sum(), (tail_mass - log_total).exp()) <= TOL  # the tail, not cancelled
    assert torch.allclose(log_q.exp().sum(1), torch.ones(8), atol=1e-6)


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


def test_the_registry_builds_kd_loss_choices_and_help():
    from distill import config
    assert METHODS.names()[:3] == ("kd", "dist", "dkd")  # the default first, then by name
    help_line = config.schema_keys()["kd.loss"]
    assert all(m.name in help_line and m.help in help_line for m in methods.all_methods())
    with pytest.raises(Exception, match="kd.loss: 'nope' is not one of kd, dist, dkd"):
        config.validate({"kd": {"loss": "nope"}})


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("classes,gap", [(2, 0.0), (10, 40.0), (1000, 5.0)])
def test_hard_distillation_is_the_cross_entropy_to_the_teachers_top_class(smoothing, classes, gap):
    """kd.loss=hard (DeiT's hard distillation) against its formula written here: -sum_c t_c log p_c with t the
    teacher's top-1 class one-hot, smoothed to (1 - eps) + eps / C on it and eps / C elsewhere; in the objective,
    kd.alpha times it plus (1 - kd.alpha) times the CE on the true label."""
    from distill import losses
    from distill.config import KDCfg
    from distill.methods.hard import HardSettings
    from distill.training import objectives

    g = torch.Generator().manual_seed(classes)
    student, teacher = torch.randn(8, classes, generator=g), torch.randn(8, classes, generator=g)
    top = (torch.arange(8) * 7) % classes
    teacher[torch.arange(8), top] = teacher.max(1).values + gap + 1e-3  # the top class: `gap` above the rest
    target = torch.full((8, classes), smoothing / classes, dtype=torch.float64)
    target[torch.arange(8), top] += 1 - smoothing
    want = -(target * torch.log_softmax(student.double(), 1)).sum(1).mean()
    got = losses.hard(student, teacher, smoothing)
    assert got["hard"].item() == pytest.approx(want.item(), rel=1e-6) and got["loss"] is got["hard"]
    labels = torch.arange(8) % classes
    kd = KDCfg(loss="hard", alpha=0.5, hard=HardSettings(smoothing=smoothing), temperature=4.0)

    class Fixed:
        sees_mixed_input = False

        def log_probs(self, batch, x, temperature, standardized):
            return torch.log_softmax(teacher / temperature, 1)
    objective = objectives.objective_for(kd, classes, 0.0, Fixed())
    terms = objective(student, labelled(labels), None, None, objectives.Progress(epoch=0, step=0))
    ce = torch.nn.functional.cross_entropy(student.double(), labels)
    assert terms["loss"].item() == pytest.approx((0.5 * want + 0.5 * ce).item(), rel=1e-6)
