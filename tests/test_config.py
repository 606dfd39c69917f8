import re
from pathlib import Path

import pytest

from conftest import ROOT, compose_recipe, run_cli
from distill import cli, config, files
from distill.stages import student
from distill.errors import ConfigError
from distill.store.records import Normalization


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (ROOT / "recipes" / "recipe").glob("*.yaml")))
def test_every_recipe_composes_and_validates(recipe):
    cfg = config.validate(compose_recipe(recipe))
    assert cfg.name == recipe


CACHE_LINE = re.compile(r"^# Cache: (\d+) views for (\d+) student epochs = ([\d.]+) uses per view; teacher forwards "
                        r"per image: (\d+) once, online KD (\d+) per student\.$", re.M)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (ROOT / "recipes" / "recipe").glob("*.yaml")))
def test_recipe_header_states_its_uses_per_view_and_cost(recipe):
    cfg = config.validate(compose_recipe(recipe))
    line = CACHE_LINE.search((ROOT / "recipes" / "recipe" / f"{recipe}.yaml").read_text())
    assert line, f"{recipe}: no '# Cache: V views for E student epochs = U uses per view; ...' header line"
    v, e, uses, cached, online = line.groups()
    assert (int(v), int(e)) == (cfg.cache.views, cfg.student.epochs)
    assert float(uses) == round(cfg.student.epochs / cfg.cache.views, 1)
    teachers = max(len(cfg.teachers), 1)  # an ensemble: each teacher labels its own cache (runs online)
    assert (int(cached), int(online)) == (teachers * cfg.cache.views, teachers * cfg.student.epochs)
    assert cfg.cache.views == student.views_needed(cfg.student.epochs)  # the fewest views the measured rule allows


def test_recipe_overrides_groups_and_keys():
    cfg = config.validate(compose_recipe("cifar10_resnet20_to_resnet8", ["teacher.epochs=3", "teacher.optim.lr=0.05"]))
    assert cfg.data.image_column == "img" and cfg.data.train_size == 20000  # group override + recipe key
    assert cfg.teacher.epochs == 3 and cfg.teacher.optim.lr == 0.05
    assert cfg.student.label_smoothing == 0.1 and cfg.student.epochs == 15  # tricks/cifar.yaml mounted at student
    assert cfg.teacher.label_smoothing == 0.0 and cfg.teacher.optim.lr == 0.05  # the recipe, then the command line


@pytest.mark.parametrize("raw, key, words", [
    ({"teacher": {"optim": {"lrr": 0.1}}}, "teacher.optim.lrr", "no such setting (did you mean teacher.optim.lr"),
    ({"student": {"optim": 5}}, "student.optim", "must be a section such as {name: sgd}, not 5"),
    ({"kd": {"dkd": {"alpha": 2, "gamma": 4}}}, "kd.dkd.gamma", "no such setting"),
    ({"teacher": {"epochs": "many"}}, "teacher.epochs", "could not be converted"),
    ({"teacher": {"optim": {"lr": -0.1}}}, "teacher.optim.lr", "must be > 0"),
    ({"teacher": {"label_smoothing": 1.0}}, "teacher.label_smoothing", "must be < 1"),
    ({"teacher": {"optim": {"name": "rmsprop"}}}, "teacher.optim.name", "not one of"),
    ({"data": {"source": "parquet"}}, "data.path", "required"),
    ({"data": {"mean": [0.5, 0.5, 0.5]}}, "data.mean/data.std", "both"),
])
def test_bad_config_is_one_line_naming_the_key(raw, key, words):
    with pytest.raises(ConfigError) as err:
        config.validate(raw)
    msg = str(err.value)
    assert msg.startswith(key) and words in msg and "\n" not in msg


def test_defaults_validate():
    cfg = config.validate({})
    assert cfg.teacher.optim.lr == 0.1 and cfg.stage == "all"


def test_unknown_command_line_key_is_named():
    with pytest.raises(ConfigError, match=r"^teacher\.epoch: no such setting \(did you mean teacher\.epochs"):
        cli.check_overrides(["teacher.epoch=3"], groups={"data", "recipe", "tricks"})
    cli.check_overrides(["recipe=demo", "tricks@teacher=cifar", "hydra.verbose=true", "+x=1",
                            "teacher.optim.lr=0.2", "data.mean=[1,1,1]"], groups={"data", "recipe", "tricks"})


def test_cli_bad_value_stops_before_any_work(tmp_path: Path):
    r = run_cli("teacher.optim.lr=-1", f"run_root={tmp_path / 'runs'}", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: teacher.optim.lr: -1.0 must be > 0"
    assert not (tmp_path / "runs").exists()
    r = run_cli("teacher.lr=0.1", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: teacher.lr: no such setting (did you mean teacher.optim.lr, teacher.finetune.lr, student.optim.lr?)"]


def test_recipes_reuse_recipes_and_groups():
    r18 = config.validate(compose_recipe("resnet50_to_r18"))
    assert (r18.teacher.source, r18.teacher.model, r18.teacher.pretrained) == ("timm", "resnet50", True)
    assert r18.teacher.finetune.epochs == 0 and r18.data.image_size == 224 and r18.data.test_split == "validation"
    assert (r18.student.model, r18.student.epochs, r18.student.sched.warmup_epochs) == ("resnet18", 100, 5)
    s = r18.student
    assert (s.label_smoothing, s.mix.mixup_alpha, s.optim.weight_decay) == (0.1, 0.2, 1e-4)
    mbv3 = config.validate(compose_recipe("resnet50_to_mobilenetv3"))
    assert mbv3.student.model == "mobilenetv3_large_100" and mbv3.student.init == "timm"
    for same in ("data", "teacher", "cache", "kd"):  # everything the cache depends on: it is shared
        assert getattr(mbv3, same) == getattr(r18, same), same
    r110 = config.validate(compose_recipe("cifar100_resnet110_to_resnet32"))
    assert (r110.teacher.model, r110.student.model, r110.data.label_column) == ("resnet110", "resnet32", "fine_label")
    assert r110.student.epochs == 240 and r110.kd.alpha == 0.9 and r110.kd.temperature == 4.0
    c10 = config.validate(compose_recipe("cifar10_resnet56_to_resnet20"))
    assert c10.data.label_column == "label" and c10.data.val_size == 5000 and c10.teacher.epochs == 240


@pytest.mark.parametrize("name,alpha,beta", [("cifar100_resnet32x4_to_resnet8x4_dkd_ls", 9.0, 81.0),
                                             ("cifar100_resnet56_to_resnet20_dkd_ls", 12.0, 144.0)])
def test_dkd_with_logit_standardization_recipes_map_the_authors_code_and_share_the_pairs_teacher(name, alpha, beta):
    cfg = config.validate(compose_recipe(name))
    pair = name.removesuffix("_dkd_ls")
    assert (cfg.kd.loss, cfg.kd.logit_standardization, cfg.kd.dkd.alpha, cfg.kd.dkd.beta, cfg.kd.temperature,
            cfg.kd.dkd.warmup) == ("dkd", True, alpha, beta, 4.0, 20)
    assert cfg.teacher.dir == f"runs/{pair}/teacher" and cfg.cache == config.validate(compose_recipe(pair)).cache


def test_recipes_are_listed_with_one_line_each():
    lines = config.recipe_lines(ROOT / "recipes" / "recipe")
    readme = (ROOT / "recipes" / "README.md").read_text()
    helptext = run_cli("--help", cwd=ROOT).stdout
    for name, line in lines.items():
        assert line and f"| `{name}` | {line} |" in readme, name
        assert name in helptext and line in helptext, name


# ---------------------------------------------------------------- structure: fingerprints from tags, stage imports

def test_every_schema_field_names_the_outputs_it_changes():
    from distill.store import fingerprints
    tags = fingerprints.tags()
    assert [key for key, outputs in tags.items() if outputs is None] == []  # a new field without `changes=`
    assert all(set(outputs) <= set(config.OUTPUTS) for outputs in tags.values())
    assert tags["data.image_size"] == config.OUTPUTS and tags["data.num_workers"] == ()
    assert tags["teacher.optim.lr"] == ("teacher",) and tags["student.optim.lr"] == ("student", "baseline")
    assert tags["cache.mix.prob"] == ("cache",) and tags["kd.alpha"] == ("student",)


def _other(value):
    """A different value of the same kind (validity does not matter to a fingerprint)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return value + [0.5]
    return "other"  # None


def _with(cfg, key, value):
    import copy
    cfg = copy.deepcopy(cfg)
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = getattr(node, part)
    setattr(node, leaf, value)
    return cfg


@pytest.mark.parametrize("output", ["cache", "teacher", "student", "baseline"])
def test_each_tagged_field_changes_its_outputs_fingerprint_and_no_other(output):
    from distill.data import DataIdentity
    from distill.store import fingerprints
    cfg = config.validate({})
    identity = DataIdentity("demo", None, None, "x", {"split": "train"}, {"split": "val"}, ["a", "b"])
    norm = Normalization((0.5,) * 3, (0.25,) * 3)

    def fp(c):
        if output == "cache":
            return fingerprints.cache_identity(c, identity, norm, 1000, "sha").folder_name()
        if output == "teacher":
            return fingerprints.teacher(c, identity, norm)
        return fingerprints.student(c, identity, norm, "source", baseline=output == "baseline")

    ref = fp(cfg)
    for key, outputs in fingerprints.tags().items():
        if output == "cache" and key in ("cache.topk", "kd.temperature"):
            continue  # normalised to what the bytes use (checked in test_cache.py)
        changed = fp(_with(cfg, key, _other(fingerprints._get(cfg, key))))
        assert (changed != ref) == (output in outputs), key


def test_no_stage_imports_another_and_only_softlabels_reads_cache_files():
    import ast
    stages = ROOT / "distill" / "stages"
    names = {p.stem for p in stages.glob("*.py")} - {"__init__"}
    for path in stages.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("distill.stages", None):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distill.stages."):
                imported.add(node.module.rsplit(".", 1)[1])
            elif isinstance(node, ast.Import):
                imported |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("distill.stages.")}
        assert not imported & names, f"{path.name} imports the stage(s) {imported & names}"
    for path in (ROOT / "distill").rglob("*.py"):
        if path.name not in ("softlabels.py", "pixels.py"):  # pixels.py reads back its own decoded pixels
            text = path.read_text()
            assert "np.load" not in text and "manifest.json" not in text.replace("(no manifest.json)", ""), path


# The parts of distill/, bottom to top: a module imports only from its own part and the parts below it.
PARTS = ["errors", "methods", "config", "data", "store", "training", "stages"]  # anything else: the top (run, report..)
BASE = ("errors", "files", "faults", "fields", "registry")  # imported by every part, import no part


def _part(module: str) -> int:
    """distill.X... -> X's place in PARTS (a top-level module not listed is the top)."""
    name = module.split(".")[1] if module.count(".") else ""
    return 0 if name in BASE else PARTS.index(name) if name in PARTS else len(PARTS)


def _distill_imports(tree) -> set[str]:
    """The distill modules a file imports (at any depth, but not under `if TYPE_CHECKING:`, which is hints only)."""
    import ast
    hinted = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
              "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in hinted:
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "distill":
            found |= {f"distill.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distill."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("distill.")}
    return found


def test_each_part_imports_only_from_itself_and_the_parts_below():
    import ast
    checked = 0
    for path in (ROOT / "distill").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        here = _part(module)
        for imported in _distill_imports(ast.parse(path.read_text())):
            assert _part(imported) <= here, f"{module} ({(PARTS + ['top'])[here]}) imports {imported}, a part above it"
            checked += 1
    assert checked > 50  # the walk saw the imports
    for part in ("methods", "data", "store", "training", "stages"):
        doc = ast.get_docstring(ast.parse((ROOT / "distill" / part / "__init__.py").read_text()))
        assert doc and "May import" in doc, part


def test_no_import_circle_between_the_schema_and_the_methods():
    """config reads the methods through the registry (their settings sections, checks and help): it imports no
    method, so the methods' own hints of the schema's types make no circle."""
    import ast
    graph = {}
    for path in (ROOT / "distill").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[module] = _distill_imports(ast.parse(path.read_text()))
    assert not {m for m in graph["distill.config"] if m.startswith("distill.methods")}
    assert graph["distill.registry"] <= {"distill.errors"}


def test_every_extension_point_is_one_registry_whose_names_are_its_choices_and_its_help():
    """Methods, data sources, stages and teacher sources are registered one way (distill/registry.py); each one's
    setting takes its registry's names, and --help lists them the same way, every name with its line (a built-in's
    line read from its file without importing it, equal to what it registers)."""
    from distill import registry
    from distill.errors import ConfigError as Refused
    keys = config.schema_keys()
    extension_points = (registry.METHODS, registry.SOURCES, registry.STAGES, registry.TEACHER_SOURCES)
    for point in extension_points:
        assert point.names() and point.listing() in keys[point.key]
        assert all(f"{name}: " in keys[point.key] for name in point.names())
        with pytest.raises(Refused, match=rf"^{re.escape(point.key)}: 'nope' is not one of {point.names()[0]}, "):
            point.lookup("nope")
    for point in extension_points[1:]:  # a method's line is its class keywords', read once it is imported
        assert registry.Registry(point.key, *point.where, order=point.order).listing() == point.listing()
    assert registry.STAGES.names() == ("teacher", "cache", "student", "report", "export", "publish")
    assert registry.STAGES.on_request == ("publish",)  # never part of stage=all
    assert set(registry.SOURCES.names()) == {"demo", "hub", "parquet", "imagefolder", "disk"}
    assert registry.TEACHER_SOURCES.names() == ("train", "timm", "published")
    from distill import report
    assert registry.STAGES.lookup("report") is report.run  # the report is a stage like the others


def test_a_registry_refuses_a_taken_name_and_a_built_in_file_of_another_name():
    from distill import registry
    point = registry.Registry("thing", "distill.stages")

    def run(ctx):
        return None

    run.__module__ = "distill.stages.teacher"
    with pytest.raises(ValueError, match="distill.stages.teacher must register the thing of its own name, not 'x'"):
        point.register("x")(run)
    point.register("teacher")(run)
    with pytest.raises(ValueError, match="thing name 'teacher' is empty or already registered"):
        point.register("teacher")(lambda ctx: None)
    assert point.register("teacher")(run) is run  # the same function again (a module read twice): no error


@pytest.mark.parametrize("raw, message", [
    ({"kd": {"loss": "dkd"}, "student": {"mix": {"mixup_alpha": 0.2}}}, "student.mix: kd.loss=dkd needs each sample"),
    ({"kd": {"alpha": 9.0}}, "kd.ce_weight: needed when kd.alpha (9.0) is above 1"),
    ({"kd": {"loss": "dist", "logit_standardization": True}}, "kd.logit_standardization: applies to kd.loss=kd"),
    ({"kd": {"loss": "dkd", "balance": "scale"}}, "kd.balance: scale balances kd.loss=kd's two terms"),
])
def test_method_settings_that_cannot_work_stop_in_one_line(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.validate(raw)


def test_ci_runs_the_readmes_install_line_and_it_brings_what_the_tests_use():
    """A newcomer types the README's two commands; .ci/run takes those very lines from the README (so a missing
    step cannot hide behind CI), and the extras the install line names include every optional package a test
    imports (onnx, onnxruntime: the export tests)."""
    ci, readme = (ROOT / ".ci" / "run").read_text(), (ROOT / "README.md").read_text()
    assert "readme_line 'pip install'" in ci and "readme_line 'python -m pytest'" in ci
    assert not re.search(r"pip install[^\n]*-e", ci)  # no install of its own besides the README's
    install = next(line for line in readme.splitlines() if line.startswith("pip install"))
    extras = re.search(r'\.\[([\w,]+)\]', install).group(1).split(",")
    pyproject = (ROOT / "pyproject.toml").read_text()
    wanted = " ".join(re.search(rf"^{extra} = \[([^\]]*)\]", pyproject, re.M).group(1) for extra in extras)
    used = {m.group(1) for path in (ROOT / "tests").glob("*.py")
            for m in re.finditer(r'importorskip\("(\w+)"\)', path.read_text())}
    assert used and all(f'"{name}' in wanted for name in used), (used, wanted)


def test_a_bad_setting_answers_before_torch_loads():
    """kd.loss's choices come from the methods' file names, not from importing them: a config error is quick."""
    import subprocess
    import sys
    code = ("import sys\nfrom distill import config\ntry:\n    config.validate({'kd': {'alpha': -1.0}})\n"
            "except Exception as e:\n    print(e)\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "kd.alpha: -1.0 must be >= 0"
