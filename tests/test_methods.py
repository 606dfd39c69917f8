"""A distillation method is one file: a new file in distill/methods/ is selectable, configurable, validated,
documented and named on the model card, with no other file touched."""
import dataclasses
import re

import pytest
import torch

from conftest import ROOT, cache_overrides, extension_file, labelled, run_cli, run_here
from distill import config, methods
from distill.errors import ConfigError
from distill.registry import METHODS

TOY = ROOT / "distill" / "methods" / "toymethod.py"
TOY_SOURCE = '''"""A method written by tests/test_methods.py (removed after it)."""
from __future__ import annotations

from dataclasses import dataclass

from distill.fields import STUDENT, setting
from distill.methods import Method
from distill.registry import METHODS


@dataclass
class ToySettings:
    weight: float = setting(0.5, doc="the toy term's weight, in [0, 1]", ge=0, le=1, changes=STUDENT)


@METHODS.register("toymethod")
class Toy(Method, help="kd.toymethod.weight * mean squared log-probability gap", cite="a test", settings=ToySettings):
    def __call__(self, student_logits, log_q, batch, kd_cfg, epoch):
        term = (student_logits.float().log_softmax(1) - log_q).pow(2).mean()
        return {"toy": term, "loss": kd_cfg.toymethod.weight * term}
'''


TOY_FEATURE = ROOT / "distill" / "methods" / "toyfeature.py"
TOY_FEATURE_SOURCE = '''"""A feature method written by tests/test_methods.py (removed after it): the squared distance
between the student's pooled feature, through its projection to the teacher's width, and the teacher's."""
from __future__ import annotations

from dataclasses import dataclass

from distill.fields import STUDENT, setting
from distill.methods import Method
from distill.registry import METHODS


@dataclass
class ToyFeatureSettings:
    weight: float = setting(0.5, doc="the toy feature term's weight", ge=0, changes=STUDENT)


@METHODS.register("toyfeature")
class ToyFeature(Method, kind="feature", help="kd.toyfeature.weight * |P f_s - f_t|^2",
                 cite="a test", settings=ToyFeatureSettings):
    def __call__(self, student_feature, teacher_feature, batch, kd_cfg, epoch):
        term = (student_feature.float() - teacher_feature).pow(2).sum(1).mean()
        return {"toyfeature": term, "loss": kd_cfg.toyfeature.weight * term}
'''


def method_file(path, source: str):
    """A method file `path` in distill/methods/ holding `source`, registered for the block and removed after it
    (the registry read again)."""
    return extension_file(path, source, METHODS)


@pytest.fixture
def toy_method():
    """distill/methods/toymethod.py, written for the test and removed after it."""
    with method_file(TOY, TOY_SOURCE):
        yield


def test_a_new_method_file_is_selectable_validated_documented_and_on_the_card(toy_method):
    from distill.stages import export
    from distill.store import fingerprints
    from distill.training import objectives

    assert "toymethod" in METHODS.names()
    cfg = config.validate({"kd": {"loss": "toymethod", "toymethod": {"weight": 0.25}}})
    assert cfg.kd.toymethod.weight == 0.25 and type(methods.chosen(cfg.kd)).__name__ == "Toy"
    with pytest.raises(ConfigError) as err:
        config.validate({"kd": {"loss": "toymethod", "toymethod": {"weight": 2.0}}})
    assert str(err.value) == "kd.toymethod.weight: 2.0 must be <= 1"
    assert export._method_line(cfg) == "toymethod (a test), weight 0.25"
    assert fingerprints.tags()["kd.toymethod.weight"] == ("student",)
    assert config.inert(config.validate({"kd": {"toymethod": {"weight": 0.25}}})) == [
        "kd.toymethod.weight=0.25 is read by kd.loss=toymethod only; this run (kd.loss=kd) ignores it"]

    class Fixed:  # a teacher whose target is given
        sees_mixed_input = False

        def log_probs(self, batch, x, temperature, standardize):
            return log_q

    logits, log_q = torch.randn(4, 3), torch.randn(4, 3).log_softmax(1)
    batch = labelled([0, 1, 2, 0])
    got = objectives.objective_for(cfg.kd, 3, 0.0, Fixed())(logits, batch, None, None, objectives.Progress(0, 0))
    toy = (logits.log_softmax(1) - log_q).pow(2).mean()
    ce = torch.nn.functional.cross_entropy(logits, batch.label)
    assert torch.allclose(got["toy"], toy) and torch.allclose(got["loss"], ce + 0.25 * toy)  # CE weight: 1

    helptext = run_cli("--help", cwd=ROOT).stdout
    assert re.search(r"kd\.toymethod\.weight +the toy term's weight, in \[0, 1\]", helptext)
    assert "toymethod: kd.toymethod.weight * mean squared log-probability gap (a test)" in helptext
    r = run_cli("kd.loss=toymethod", "kd.toymethod.weight=2", cwd=ROOT)
    assert (r.returncode, r.stderr.strip()) == (2, "error: kd.toymethod.weight: 2.0 must be <= 1")


def test_a_feature_method_is_one_file_and_trains_a_student(shared, tmp_path):
    """A method that distils features (FitNets' kind) is one file too: it declares kind="feature", is handed the
    student's pooled feature through its projection to the teacher's width and the teacher's pooled feature, asks
    for the teacher's features like kd.feature_weight does, and the student stage trains with it."""
    import json

    from distill.training import models, objectives

    with method_file(TOY_FEATURE, TOY_FEATURE_SOURCE):
        with pytest.raises(ConfigError, match=r"^kd\.loss: with kd\.teacher=cached the teacher's features come from"):
            config.validate({"kd": {"loss": "toyfeature"}})
        with pytest.raises(ConfigError, match=r"^kd\.logit_standardization: applies to kd\.loss=kd, dkd, not "):
            config.validate({"kd": {"loss": "toyfeature", "logit_standardization": True}, "cache": {"features": True}})
        with pytest.raises(ConfigError, match=r"^kd\.token: the distillation head learns the teacher's logits"):
            config.validate({"kd": {"loss": "toyfeature", "token": "soft"}, "cache": {"features": True}})
        cfg = config.validate({"kd": {"loss": "toyfeature"}, "cache": {"features": True}})
        torch.manual_seed(0)
        student = models.FeatureStudent(models.create("resnet8x4", 3), 64).train()  # 256 -> 64: a projection
        taught = torch.randn(4, 64)
        teacher = type("Fixed", (), {"sees_mixed_input": False, "feature": lambda self, batch, x: taught})()
        objective = objectives.objective_for(cfg.kd, 3, 0.0, teacher)
        x, batch = torch.randn(4, 3, 12, 12), labelled([0, 1, 2, 0])
        out = student(x)
        got = objective(out, batch, None, x, objectives.Progress(0, 0))
        term = (out["feature"] - taught).pow(2).sum(1).mean()
        ce = torch.nn.functional.cross_entropy(out["logits"], batch.label)
        assert set(got) == {"loss", "ce", "toyfeature"} and torch.allclose(got["toyfeature"], term)
        assert torch.allclose(got["loss"], ce + 0.5 * term)  # CE weight: 1, the method's default
        got["loss"].backward()
        assert student.project.weight.grad.abs().sum() > 0  # the projection learns with the student

        shared.copy_cache(tmp_path, cache__features="true")
        r = run_here(*cache_overrides(shared.data, tmp_path, shared.teacher_file, cache__features="true"),
                     "stage=student", "student.model=resnet8x4", "student.epochs=1", "student.batch_size=16",
                     "kd.loss=toyfeature", "kd.toyfeature.weight=2")
        assert r.returncode == 0, r.stderr
        epoch = json.loads((tmp_path / "runs" / "tiny" / "student" / "metrics.jsonl").read_text().splitlines()[-1])
        assert set(epoch["terms"]) == {"loss", "ce", "toyfeature"} and epoch["toyfeature"] > 0


@pytest.mark.parametrize("old, new", sorted(config.RENAMED.items()))
def test_an_old_method_key_names_its_new_one(old, new, tmp_path):
    """On the command line (before Hydra) and in a recipe (at validation), in one line."""
    from distill import cli

    with pytest.raises(ConfigError, match=f"^{re.escape(old)}: renamed to {re.escape(new)}$"):
        cli.check_overrides([f"{old}=1"], groups=set())
    section, key = old.split(".")
    with pytest.raises(ConfigError, match=f"^{re.escape(old)}: renamed to {re.escape(new)}$"):
        config.validate({section: {key: 1}})


def test_each_method_declares_its_settings_section_and_the_schema_is_composed_from_them():
    """kd.NAME.KEY for each method with settings (mdistiller's CFG.DKD.* shape); KDCfg holds the generic keys and
    those sections only; a method file is a module of distill/methods/, its shared pieces (common/) are not one."""
    sections = {m.name: m.settings for m in methods.all_methods() if m.settings is not None}
    assert set(sections) == {"dkd", "dist", "hard"}
    kd = config.validate({}).kd
    assert {f.name for f in dataclasses.fields(kd)} == {f.name for f in dataclasses.fields(config.KDBase)} | {
        "dkd", "dist", "hard"}
    assert (kd.dkd.alpha, kd.dkd.beta, kd.dkd.warmup, kd.dist.beta, kd.dist.gamma, kd.hard.smoothing) == (
        1.0, 8.0, 20, 2.0, 2.0, 0.0)
    assert "common" not in METHODS.names() and all(m.cite and m.help for m in methods.all_methods())


def test_a_settings_check_inside_a_stage_is_a_config_check():
    """A run that exports, with per-image standardisation (which timm's preprocessing cannot state), stops at
    validation; a run that stops before the export does not."""
    with pytest.raises(ConfigError, match=r"^data\.per_image_norm: timm's preprocessing has no per-image"):
        config.validate({"data": {"per_image_norm": True}})
    assert config.validate({"data": {"per_image_norm": True}, "stage": "student"}).stage == "student"


def test_the_card_names_the_method_that_trained_the_student():
    """kd.token=hard with kd.loss=kd trains the distillation head by hard-label distillation (methods.chosen): the
    card names that method, not kd.loss's."""
    from distill.stages import export
    cfg = config.validate({"kd": {"token": "hard", "loss": "kd", "hard": {"smoothing": 0.1}}})
    assert methods.chosen(cfg.kd).name == "hard"
    assert export._method_line(cfg) == "hard-label distillation (DeiT, Touvron et al. 2021), alpha 0.9, smoothing 0.1"


def test_a_method_section_is_set_whole_or_by_key_on_the_command_line():
    """`kd.dkd={alpha: ...}` reaches validation like `kd.dkd.alpha=...` (Hydra is given the section either way)."""
    for arg in ("kd.dkd={alpha:-2}", "kd.dkd.alpha=-2"):
        r = run_cli("kd.loss=dkd", arg, cwd=ROOT)
        assert (r.returncode, r.stderr.strip()) == (2, "error: kd.dkd.alpha: -2.0 must be >= 0"), arg


@pytest.mark.parametrize("arg, line", [
    ("kd.dkd={alpha: 2, gamma: 4}", "kd.dkd.gamma: no such setting (did you mean kd.dist.gamma?)"),
    ("kd.dkd=5", "kd.dkd: must be a section such as {alpha: 1.0}, not 5 (or set one key: kd.dkd.alpha=...)"),
    ("kd={dkd: {gamma: 4}}", "kd.dkd.gamma: no such setting (did you mean kd.dist.gamma?)"),
    ("student.optim=5", "student.optim: must be a section such as {name: sgd}, not 5 (or set one key: "
                        "student.optim.name=...)"),
    ("student.optim={lrx: 1}", "student.optim.lrx: no such setting (did you mean student.optim.lr, "
                               "student.optim.switch_lr, student.optim.name?)"),
    ("data=5", "data: a config group: give one of its options by name (a file NAME.yaml in recipes/data/; --help "
               "lists them)"),
])
def test_a_section_given_a_key_it_lacks_or_no_section_is_one_line_naming_the_key(arg, line):
    """Hydra answered the first with its multi-line error (exit 1), OmegaConf the second with "Merge error: int is
    not a subclass of DKDSettings": both name the key, before Hydra composes."""
    r = run_cli("kd.loss=dkd", arg, cwd=ROOT)
    assert (r.returncode, r.stderr.strip()) == (2, f"error: {line}"), r.stderr


def test_help_shows_every_methods_defaults_in_the_composed_config():
    """--help's composed config lists kd.dkd, kd.dist and kd.hard with their defaults (a method's section was given
    to Hydra only when an override named it, so --help hid them)."""
    import yaml

    composed = run_cli("--help", cwd=ROOT).stdout.split("== Composed config (with the overrides given) ==")[1]
    kd = yaml.safe_load(composed.split("Recipes live in")[0])["kd"]
    default = config.Config().kd
    for name in ("dkd", "dist", "hard"):
        assert kd[name] == dataclasses.asdict(getattr(default, name)), name
