"""Nothing in the documentation goes stale silently: every command README.md and docs/*.md show is composed and
validated as the run would (without training), every snippet that uses `distill.losses` runs on small tensors,
every setting the prose names exists, the settings reference lists every key of the schema, and the site builds
with `mkdocs build --strict`.

Placeholders (docs/README.md says the same): `recipe=...` and `recipe=NAME` stand for a real recipe and are checked
as `recipe=demo`; every other value is checked as written, so a documented command shows real values.
"""
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from distill import config, errors

RECIPES = ROOT / "recipes"
PREFIXES = ("python distill/run.py", "accelerate launch", "python -m distill")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*)`(?!`)")
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z_]*|.*\.\.\..*)$")

sys.path.insert(0, str(ROOT / "docs"))
import hooks  # noqa: E402  (docs/hooks.py: the generated pages)


def pages(folder: Path | None = None) -> list[Path]:
    """README.md and every page of the site; or the pages in `folder`."""
    return sorted(folder.glob("*.md")) if folder else [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(text: str) -> list[tuple[int, str]]:
    """(line, command) for every `python distill/run.py`, `accelerate launch` and `python -m distill...` command in
    a page: the lines of its shell code blocks (joined at a trailing backslash) and its inline code spans."""
    found = []
    for m in FENCE.finditer(text):
        if m.group(1) not in ("bash", "sh", "shell", "console", ""):
            continue
        first = text[:m.start(2)].count("\n") + 1
        joined, start = "", None
        for i, line in enumerate(m.group(2).splitlines()):
            start = first + i if not joined else start
            joined += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
            if not line.rstrip().endswith("\\"):
                if joined.strip().startswith(PREFIXES):
                    found.append((start, shlex.join(shlex.split(joined, comments=True))))
                joined = ""
    for m in INLINE.finditer(FENCE.sub(lambda f: "\n" * f.group(0).count("\n"), text)):
        span = " ".join(m.group(1).split())
        if span.startswith(PREFIXES) and (not span.startswith("accelerate") or "distill/run.py" in span):
            found.append((text[:m.start()].count("\n") + 1, span))
    return found


def _run_args(tokens: list[str]) -> list[str] | None:
    """The arguments a command gives distill/run.py (None: it runs something else)."""
    if tokens[:2] == ["python", "distill/run.py"]:
        return tokens[2:]
    if tokens[:2] == ["accelerate", "launch"]:
        script = next(i for i, t in enumerate(tokens) if t.endswith("distill/run.py"))
        return tokens[script + 1:]
    return None


def _placeholders(args: list[str]) -> list[str]:
    """The arguments to compose: `recipe=...` or `recipe=NAME` (a recipe in general) checked as the demo recipe."""
    return ["recipe=demo" if arg.startswith("recipe=") and PLACEHOLDER.match(arg[len("recipe="):]) else arg
            for arg in args]


def _points(overrides: list[str]) -> list[list[str]]:
    """Points that take every value of each discrete sweep at least once (point j: each sweep's j-th value, cycled);
    an interval or range sweep is left to its key check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            choices.append([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_discrete_sweep() else [])
        else:
            choices.append([o.input_line])
    choices = [c for c in choices if c]
    return [[c[j % len(c)] for c in choices] for j in range(max(map(len, choices), default=1))]


def check(command: str) -> str | None:
    """What is wrong with a documented command (one line), or None: the module exists, or every key and value of
    distill/run.py's arguments composes with Hydra and validates against the schema, as the run checks them."""
    from hydra import compose, initialize_config_dir

    from distill import cli

    tokens = shlex.split(command, comments=True)
    if tokens[:2] == ["python", "-m"]:
        return None if importlib.util.find_spec(tokens[2]) else f"no module {tokens[2]}"
    args = _run_args(tokens)
    if args is None:
        return f"not a distill command: {command}"
    args = _placeholders(cli.replace_dicts(args))
    try:
        cli.check_syntax(args)
        cli.check_recipe(args, RECIPES / "recipe")
        cli.check_overrides(args, {p.name for p in RECIPES.iterdir() if p.is_dir()})
        overrides, _ = cli.hydra_args(args)
        ours = [o for o in overrides if not o.startswith(("hydra/", "hydra.", "+hydra"))]
        with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
            for point in _points(ours):
                recipe = next((p.split("=", 1)[1] for p in point if p.startswith("recipe=")), "demo")
                named = [] if any(p.startswith("name=") for p in point) else [f"name={recipe}"]  # as Hydra's run
                config.validate(compose("config", overrides=[*point, *named]))
    except errors.UserError as e:
        return str(e)
    except Exception as e:  # Hydra's own: a group option or key that composes to nothing
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def documented(folder: Path | None = None) -> list[tuple[str, str]]:
    """(page:line, command) for every command in the pages, each command once (where it first appears)."""
    found = {}
    for page in pages(folder):
        for line, cmd in commands(page.read_text()):
            found.setdefault(cmd, f"{page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name}:{line}")
    return [(where, cmd) for cmd, where in found.items()]


def test_the_docs_show_commands_of_every_kind():
    found = [cmd for _, cmd in documented()]
    assert len(found) >= 25 and all(any(c.startswith(p) for c in found) for p in PREFIXES), found


@pytest.mark.parametrize("where,command", documented())
def test_every_documented_command_validates(where, command):
    config.register_schema()
    wrong = check(command)
    assert wrong is None, f"{where}: {command}: {wrong}"


def test_a_renamed_key_in_a_page_fails_the_command_check(tmp_path):
    """A page whose command names a key that no longer exists (teacher.optim.lr renamed) is reported, naming it;
    the page as written passes."""
    config.register_schema()
    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert "teacher.optim.lr=0.05" in page
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "getting-started.md").write_text(page.replace("teacher.optim.lr=", "teacher.optim.rate="))
    wrong = [(where, check(cmd)) for where, cmd in documented(tmp_path / "docs") if check(cmd)]
    assert len(wrong) == 1 and "teacher.optim.rate: no such setting" in wrong[0][1], wrong
    assert not [cmd for _, cmd in documented(tmp_path / "docs") if check(cmd.replace("optim.rate", "optim.lr"))]
    assert "kd.no_such_key: no such setting" in check("python distill/run.py -m kd.no_such_key=1,2")
    assert "kd.temperature" in check("python distill/run.py kd.temperature=0")  # a value out of range
    assert "recipe" in check("python distill/run.py recipe=no_such_recipe")


def test_every_losses_snippet_runs_on_small_tensors():
    """Each Python block that uses distill.losses runs, given small stand-ins for the names a training loop has
    (student, teacher, loader, optimizer)."""
    import torch

    import distill.losses

    snippets = [(page, m.group(2)) for page in pages() for m in FENCE.finditer(page.read_text())
                if m.group(1) == "python" and "distill.losses" in m.group(2)]
    assert len(snippets) >= 2
    for page, code in snippets:
        torch.manual_seed(0)
        student, teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10)), torch.nn.Linear(48, 10)
        teacher = torch.nn.Sequential(torch.nn.Flatten(), teacher).eval().requires_grad_(False)
        loader = [(torch.randn(4, 3, 4, 4), torch.randint(0, 10, (4,))) for _ in range(2)]
        names = {"torch": torch, "distill": distill, "student": student, "teacher": teacher, "loader": loader,
                 "optimizer": torch.optim.SGD(student.parameters(), lr=0.1)}
        before = student[1].weight.clone()
        exec(compile(code, str(page), "exec"), names)
        if "optimizer.step()" in code:
            assert not torch.equal(before, student[1].weight), page  # the loop trained


def test_every_setting_the_docs_name_exists():
    from test_references import _is_attribute, _settings_pattern

    named, known = _settings_pattern()
    dicts = tuple(f"{key}." for key, f, _ in config.leaves() if "Dict" in str(f.type))  # their keys are timm's
    wrong = []
    for page in pages():
        for m in INLINE.finditer(page.read_text()):
            if m.group(1).startswith("error: "):
                continue  # an error message quoted, naming a wrong key on purpose
            for token in named.findall(m.group(1)):
                if token not in known and not token.endswith(("json", "py", "md", "npy")) and \
                        not token.startswith(("teachers.", *dicts)) and not _is_attribute(token):
                    wrong.append(f"{page.name}: {token}")
    assert not wrong, wrong


def test_the_settings_reference_lists_every_key_with_what_it_changes():
    from distill.store import fingerprints

    text = hooks.settings_markdown()
    listed = re.findall(r"^\| `([^`]+)` \|", text, re.M)
    assert sorted(listed) == sorted(key for key, _, _ in config.leaves()) and len(set(listed)) == len(listed)
    for key, outputs in fingerprints.tags().items():  # each row's "changes" cell: the fingerprints' own tag
        row = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
        assert row.split(" | ")[4] == hooks.OUTPUT_WORDS.get(outputs, ", ".join(outputs or ())), row
    row = next(line for line in text.splitlines() if line.startswith("| `kd.temperature` |"))
    assert "`4.0`" in row and "> 0" in row and "student, cache" in row and "KD temperature T" in row
    optim = next(r for r in text.splitlines() if r.startswith("| `teacher.optim.name`"))
    assert "`sgd`, `adamw`, `adam`" in optim
    recipes = hooks.recipes_markdown()
    for name, line in config.recipe_lines(RECIPES / "recipe").items():
        assert f"| `{name}` | {line} |" in recipes


def test_the_site_builds_strict(tmp_path):
    """`mkdocs build --strict` (a broken link, anchor or missing image fails it); the built settings page holds every
    key and the recipes page every recipe (both generated by docs/hooks.py)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    site = tmp_path / "site"
    html = (site / "settings.html").read_text()
    assert all(f"<code>{key}</code>" in html for key, _, _ in config.leaves())
    recipes = (site / "recipes.html").read_text()
    assert all(f"<code>{name}</code>" in recipes for name in config.recipe_lines(RECIPES / "recipe"))
    methods_page = (site / "methods.html").read_text()
    for formula in ("kd   = KL(q_T || p_T) * T^2", "tckd = KL(b_teacher || b_student) * T^2"):  # the docstrings'
        assert methods_page.count(formula) == 1, formula  # each formula rendered once
    # opened from disk (file://): links name page files, not folders (which a browser lists), and search works
    # without a server (mkdocs-material's offline plugin writes the index as a script)
    assert not re.findall(r'href="(?!https?:)[^"#]*/"', (site / "index.html").read_text())
    assert (site / "search" / "search_index.js").is_file()



DIARY = re.compile(r"this machine|\bissue \d+|\blent\b", re.I)


def test_no_page_reads_like_a_development_diary():
    """No page of the site (nor README.md) says "this machine", "issue NN" or "lent": a reader has neither."""
    assert all(DIARY.search(s) for s in ("on this machine", "see issue 34", "no GPU lent to it"))
    assert not DIARY.search("an equivalent run, the issue's own words")
    found = [f"{page.name}:{n}: {m.group(0)}" for page in pages() for n, line in
             enumerate(page.read_text().splitlines(), 1) for m in DIARY.finditer(line)]
    assert not found, found


BYTES = re.compile(r"([\d,]+) bytes per view \(C = ([\d,]+), k = ([\d,]+)\)")


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_every_bytes_per_view_in_the_docs_is_the_cache_records_size():
    """Each "N bytes per view (C = classes, k = kept)" in a page or a recipe's comments is the size of one view of
    the cache's record (softlabels.record_dtype), so a change of the format fails this test until the text says the
    new size."""
    from distill.store import softlabels

    texts = [*pages(), *sorted((RECIPES / "recipe").glob("*.yaml"))]
    found = [(page.name, m) for page in texts
             for m in BYTES.finditer(" ".join(page.read_text().replace("#", "").split()))]
    assert len(found) >= 6, found
    for name, m in found:
        size, classes, k = map(_number, m.groups())
        assert size == softlabels.record_dtype(1, k, classes).itemsize, f"{name}: {m.group(0)}"


def _cost_rows() -> list[list[str]]:
    """The rows of the benchmarks page's table of what each recipe's cache costs."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    table = text.split("## What the cache costs", 1)[1].split("\n\n| recipe |", 1)[1].split("\n\n", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_the_cache_sizes_in_the_benchmarks_are_the_records_size():
    """Each recipe's cache size on disk in the table equals images x the record of V views (C classes, k kept),
    written to the precision the table shows."""
    from distill.store import softlabels

    rows = _cost_rows()
    assert len(rows) >= 5, rows
    for recipe, images, _, views, _, classes_k, *_, size in rows:
        classes, k = map(_number, re.findall(r"[\d,]+", classes_k))
        value, unit = re.match(r"([\d.]+) (MB|GB)", size).groups()
        exact = _number(images) * softlabels.record_dtype(_number(views), k, classes).itemsize
        decimals = len(value.partition(".")[2])
        assert value == f"{exact / {'MB': 1e6, 'GB': 1e9}[unit]:.{decimals}f}", f"{recipe}: {size}, exact {exact:,} B"


def _section(page: str, heading: str) -> str:
    """The text of a page's section, from its heading to the next heading of its level."""
    text = (ROOT / "docs" / page).read_text()
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _as_documented(path: Path) -> str:
    """A file's name as the table of files writes it: shard numbers as NNNNN, a cache's lock by its fingerprint."""
    name = re.sub(r"-\d{5}\.", "-NNNNN.", path.name)
    return re.sub(r"^\.[0-9a-f]{16}\.lock$", ".<fingerprint>.lock", name)


def test_the_table_of_files_names_every_file_and_folder_the_demo_wrote(demo):
    """Every file the demo left in its run folder and its cache root, and every folder of its run, is in the table
    of "Files each stage writes" (docs/stages.md)."""
    where, _ = demo
    table = _section("stages.md", "Files each stage writes")
    named = {n.strip() for cell in re.findall(r"`([^`]+)`", table) for n in cell.split(",")}
    written = [p for root in ("runs", "cache") for p in (where / root).rglob("*") if p.is_file()]
    assert len(written) >= 20, written
    missing = sorted({_as_documented(p) for p in written} - named)
    folders = {p.name for p in (where / "runs" / "demo").iterdir() if p.is_dir()}
    missing += sorted(f"{f}/" for f in folders if f"`{f}/`" not in table)
    assert not missing, missing


def test_the_method_file_to_copy_is_a_method_as_written():
    """The method file the methods page offers to copy, saved where it says, is a `kd.loss` choice with its own
    checked setting, on --help's line, and trains: its loss is finite and gives the student a gradient."""
    from test_methods import method_file

    from distill.registry import METHODS
    from distill.training import objectives

    source = next(m.group(2) for m in FENCE.finditer((ROOT / "docs" / "methods.md").read_text())
                  if m.group(1) == "python" and m.group(2).startswith("# distill/methods/"))
    path = ROOT / source.splitlines()[0].removeprefix("# ")
    with method_file(path, source):
        assert path.stem in METHODS.names()
        cfg = config.validate({"kd": {"loss": "reverse_kd", "reverse_kd": {"weight": 0.5}}})
        with pytest.raises(errors.ConfigError, match="kd.reverse_kd.weight"):
            config.validate({"kd": {"loss": "reverse_kd", "reverse_kd": {"weight": -1}}})
        assert "reverse_kd: kd.reverse_kd.weight * KL(p_T || q_T) * T^2" in METHODS.listing()
        import torch

        from conftest import labelled

        class Fixed:  # a teacher whose target is given
            sees_mixed_input = False

            def log_probs(self, batch, x, temperature, standardize):
                return torch.randn(4, 3).log_softmax(1)

        logits = torch.randn(4, 3, requires_grad=True)
        got = objectives.objective_for(cfg.kd, 3, 0.0, Fixed())(logits, labelled([0, 1, 2, 0]), None, None,
                                                               objectives.Progress(0, 0))
        got["loss"].backward()
        assert torch.isfinite(got["reverse_kd"]) and got["reverse_kd"] > 0 and logits.grad.abs().sum() > 0


# what stands for the part of a message that names a key, file, value or number
PLACEHOLDERS = re.compile(r"\.\.\.|\b[A-Z][A-Z_]*\b|'[^']*'|\([^)]*\)|\S*/\S*|\b[\w]+(?:\.\w+)+:|\d+")


def _messages() -> str:
    """Every string of distill's source, adjacent literals joined and each {field} kept as one character `{`."""
    text = "\n".join(p.read_text() for p in (ROOT / "distill").rglob("*.py"))
    text = re.sub(r"\"\s*\n\s*f?\"", "", text)  # "a "\n f"b" -> "a b"
    return re.sub(r"\{[^{}\n]*\}", "{", text)


def test_every_error_line_on_the_troubleshooting_page_is_one_distill_prints():
    """Each `error: ...` line the troubleshooting page explains is a message distill's source holds: its words
    between the placeholders (KEY, NAME, ..., numbers, quoted values) appear in the source as written."""
    source = _messages()
    lines = [m.group(1) for m in INLINE.finditer((ROOT / "docs" / "troubleshooting.md").read_text())
             if m.group(1).startswith("error: ")]
    assert len(lines) >= 60, len(lines)
    wrong = []
    for line in lines:
        words = [w.strip(" :;,.") for w in PLACEHOLDERS.split(" ".join(line.removeprefix("error: ").split()))]
        wrong += [f"{line}: {w!r}" for w in words if len(w) >= 8 and w not in source]
    assert not wrong, wrong


def _commands(page: str, heading: str) -> list[str]:
    """The arguments of the `python distill/run.py ...` command in a page section's first bash block."""
    block = _section(page, heading).split("```bash\n", 1)[1].split("```", 1)[0]
    return block.split("python distill/run.py", 1)[1].split()


def test_the_published_demo_trains_the_demos_student_again(demo, tmp_path):
    """docs/published.md's commands after the demo, as written (in a copy of its folder): stage=publish writes
    runs/demo/published/, and the command that trains a student from it, with the demo's teacher and cache deleted,
    gives the demo's own student, bit for bit."""
    import shutil

    from safetensors.torch import load_file

    from conftest import run_cli

    where, _ = demo
    copy = tmp_path / "copy"
    for part in ("runs", "cache"):
        shutil.copytree(where / part, copy / part)
    places = [f"run_root={copy / 'runs'}", f"cache.root={copy / 'cache'}"]
    r = run_cli(*_commands("published.md", "Publishing"), *places, cwd=copy)
    assert r.returncode == 0, r.stderr
    assert (copy / "runs" / "demo" / "published" / "README.md").is_file()
    shutil.rmtree(copy / "runs" / "demo" / "teacher")
    for manifest in (copy / "cache").glob("*/manifest.json"):
        shutil.rmtree(manifest.parent)
    r = run_cli(*_commands("published.md", "Training from a published cache"), *places, cwd=copy)
    assert r.returncode == 0, r.stderr
    mine = load_file(str(copy / "runs" / "from_published" / "student" / "model.safetensors"))
    demos = load_file(str(where / "runs" / "demo" / "student" / "model.safetensors"))
    assert mine.keys() == demos.keys() and all((mine[k] == demos[k]).all() for k in mine)


def test_the_ensemble_recipe_holds_the_beat_teachers_best_row_and_quotes_its_numbers():
    """recipes/recipe/cifar10_ensemble_to_resnet8.yaml holds the settings of the best row by validation mean of
    docs/results.md's beat-the-teachers table (the table tools/beat_teachers_table.py printed), and the numbers in its
    header are that table's: the row's test top-1 of each seed and their mean, each teacher's, their ensemble's."""
    import yaml
    from omegaconf import OmegaConf

    from conftest import compose_recipe

    sys.path.insert(0, str(ROOT / "tools"))
    import results_plot

    page = (ROOT / "docs" / "results.md").read_text()
    rows = {r["model"]: r for r in results_plot.table(page, "A student against each of its teachers")}
    students = {name: r for name, r in rows.items() if r["settings"]}
    best = max(students, key=lambda name: float(students[name]["val mean ±"].split()[0]))
    row = students[best]
    recipe = RECIPES / "recipe" / "cifar10_ensemble_to_resnet8.yaml"
    header = " ".join(line[1:].strip() for line in recipe.read_text().splitlines() if line.startswith("#"))
    assert (f"(row {best}, student seeds 0, 1, 2): {row['test top-1 (each)']} test top-1, "
            f"mean {row['test mean ±']}") in header
    teachers = " / ".join(rows[f"teacher-s{i} (resnet20)"]["test top-1 (each)"] for i in range(3))
    assert f"teachers s0 / s1 / s2: {teachers} test top-1" in header
    ensemble = next(r for name, r in rows.items() if name.startswith("their ensemble"))
    assert f"their ensemble {ensemble['test top-1 (each)']}" in header
    which, *settings = row["settings"].strip("`").split()  # "all kd.loss=dist ...": the three teachers, then keys
    cfg = compose_recipe("cifar10_ensemble_to_resnet8")
    assert which == "all" and [t.seed for t in cfg.teachers] == [0, 1, 2]
    for setting in settings:
        key, value = setting.split("=", 1)
        assert OmegaConf.select(cfg, key) == yaml.safe_load(value), f"the recipe's {key} is not the row's {value}"
