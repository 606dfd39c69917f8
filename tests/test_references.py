"""Docstrings, comments and messages name only what exists: every setting they name (`kd.temperature`) is a key of
the schema or a section of one, and every file they name (`distill/training/objectives.py`, `softlabels.py`) is in
the repository. A renamed setting or a moved module fails here, not in a reader's head."""
import io
import re
import tokenize
from pathlib import Path

from conftest import ROOT
from distill import config

FILE = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:py|sh|yaml|md))\b")
TEXT_TOKENS = (tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING))


FILE_ENDINGS = (".json", ".tmp", ".py", ".npy", ".yaml", ".md")


def _is_attribute(token: str) -> bool:
    """Whether `token` names a module's attribute (data.collate, cache.run), not a setting."""
    import importlib
    head, attr = token.split(".")[:2]
    for module in (f"distill.{head}", f"distill.stages.{head}", f"distill.store.{head}"):
        try:
            if hasattr(importlib.import_module(module), attr):
                return True
        except ImportError:
            continue
    return False


def _texts(path: Path):
    """(line, text) of every string literal and comment of a Python file: where prose lives."""
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in TEXT_TOKENS:
            yield tok.start[0], tok.string


def _settings_pattern():
    keys = set(config.schema_keys())
    sections = sorted({k.split(".")[0] for k in keys if "." in k})
    named = re.compile(r"(?<![\w.])(?:" + "|".join(sections) + r")\.[a-z_][a-z_0-9]*(?:\.[a-z_][a-z_0-9]*)*(?![\w(])")
    known = keys | {k.rsplit(".", i)[0] for k in keys for i in range(1, k.count(".") + 1)}
    return named, known | set(config.RENAMED)  # an old name, answered with its new one


def test_every_setting_a_docstring_comment_or_message_names_exists():
    named, known = _settings_pattern()
    wrong = []
    for path in sorted((ROOT / "distill").rglob("*.py")):
        for line, text in _texts(path):
            for m in named.finditer(text):
                token = m.group(0)
                if token in known or token.endswith(FILE_ENDINGS) or token.split(".", 1)[0] == "teachers" or \
                        _is_attribute(token):
                    continue  # a file (cache.json), an ensemble member's own key (teachers.NAME.*), or code
                    # (data.collate: a function of distill.data)
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {token}")
    assert not wrong, "no such setting:\n" + "\n".join(wrong)


def test_every_file_a_docstring_or_comment_names_exists():
    present = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts}
    names = {Path(p).name for p in present}
    wrong = []
    for path in sorted((ROOT / "distill").rglob("*.py")) + sorted((ROOT / "tools").rglob("*.py")):
        for line, text in _texts(path):
            for m in FILE.finditer(text):
                ref = m.group(1)
                if "/" not in ref and not ref.endswith(".py"):
                    continue  # a bare name that is not a module: an output file (out.md), not a reference
                found = any(p.endswith(ref) for p in present) if "/" in ref else ref in names
                if not found and not ref.startswith(("NAME", "recipes/recipe/NAME")):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {ref}")
    assert not wrong, "no such file:\n" + "\n".join(wrong)


def test_the_checker_finds_a_renamed_setting_and_a_moved_module(tmp_path, monkeypatch):
    """The two checks would fail: a docstring naming `kd.no_such_key` and `distill/no_such_module.py`."""
    import conftest
    fake = tmp_path / "distill"
    fake.mkdir()
    (fake / "mod.py").write_text('"""Reads kd.temperature and kd.no_such_key, as distill/no_such_module.py does."""\n')
    monkeypatch.setattr(conftest, "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    for check, needle in ((test_every_setting_a_docstring_comment_or_message_names_exists, "kd.no_such_key"),
                          (test_every_file_a_docstring_or_comment_names_exists, "distill/no_such_module.py")):
        try:
            check()
        except AssertionError as e:
            assert needle in str(e) and "kd.temperature" not in str(e)
        else:
            raise AssertionError(f"{check.__name__} missed {needle}")
