"""The one way to extend distill: a registry per extension point, filled by a decorator (as timm's
`@register_model`), read by one look-up.

    @METHODS.register("kd")                        kd.loss=kd             distill/methods/kd.py
    class KD(Method, help=..., cite=...): ...
    @SOURCES.register("parquet", help=...)         data.source=parquet    distill/data/sources/parquet.py
    class Parquet(Source): ...
    @STAGES.register("cache", help=...)            stage=cache            distill/stages/cache.py
    def run(ctx): ...
    @TEACHER_SOURCES.register("timm", help=...)    teacher.source=timm    distill/training/teachers/timm.py
    def build(teacher, num_classes, key): ...

A registered class is kept as its one instance (its `name` set to the registered name), a function as itself.
Each registry's built-ins are the modules of its folders, each module named as what it registers (a file there
that registers another name, or none, stops at the first look-up); they are imported once, at the first look-up.
`names()` reads only the file names, so that a setting's choices are known before torch loads, and `listing()`
(every name with its one line, how `--help` lists each registry) reads a built-in's help= from its file. What a
user's module or a test registers is found the same way, once that module is imported.

May import: distill.errors only (the built-ins are found by their folder, imported by name at the first look-up).
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from distill.errors import ConfigError

ROOT = Path(__file__).resolve().parent  # distill/
T = TypeVar("T")


@dataclass
class Entry:
    value: Any  # what a look-up returns: the function, or the class's one instance
    made_from: Any  # what was registered (the function or the class)
    help: str  # its one line in --help


class Registry:
    """Names -> what registered under them, for the setting `key`. `where`: the modules holding the built-ins, each
    a package (its modules, each named as what it registers) or one module (named so); `order`: the names listed
    first, in this order (the rest follow by name): the default first, or the pipeline's order; `on_request`: the
    names a run goes through only when it names them (stage=publish), never as part of another's pipeline."""

    def __init__(self, key: str, *where: str, order: tuple[str, ...] = (), on_request: tuple[str, ...] = ()):
        self.key, self.where, self.order, self.on_request = key, where, order, on_request
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator: register the decorated function or class as `name`, with its one line for --help (`help`;
        default: the object's `help` attribute). ValueError for an empty or taken name, or a built-in module that
        registers another name than its own."""
        def add(obj: T) -> T:
            taken = self._entries.get(name)
            if not name or taken is not None and taken.made_from is not obj:
                raise ValueError(f"distill.registry: {self.key} name {name!r} is empty or already registered")
            module = getattr(obj, "__module__", "")
            if self._builtin(module) and module.rsplit(".", 1)[-1] != name:
                raise ValueError(f"distill.registry: {module} must register the {self.key} of its own name, "
                                 f"not {name!r}")
            value = obj
            if isinstance(obj, type):
                obj.name = name
                value = obj()
            self._entries[name] = Entry(value, obj, help or getattr(obj, "help", ""))
            return obj
        return add

    def unregister(self, name: str) -> None:
        """Remove `name` (a test's throwaway entry)."""
        self._entries.pop(name, None)

    def lookup(self, name: str) -> Any:
        """What is registered as `name`; an unknown name stops in one line listing the names."""
        self._load()
        if name not in self._entries:
            raise ConfigError(f"{self.key}: '{name}' is not one of {', '.join(self.names())}")
        return self._entries[name].value

    def entries(self) -> dict[str, Any]:
        """Every registered name -> its value (the built-ins imported first), in `names()`' order."""
        self._load()
        return {name: self._entries[name].value for name in self.names()}

    def names(self) -> tuple[str, ...]:
        """The choices: the built-ins' module names (read from the folders, nothing imported) and the names
        registered from elsewhere; `order` first, then by name."""
        found = set(self._files()) | set(self._entries)
        return tuple(sorted(found, key=lambda n: (self.order.index(n) if n in self.order else len(self.order), n)))

    def listing(self) -> str:
        """Every name with its one line, for --help: "name: line | name: line". A registered value's line is its
        `describe()` when it has one (a method adds its citation), else its help; a built-in not imported yet is
        not imported for it (--help stays quick): its line is its register call's help=, read from its file. Only
        when a built-in's file gives no help= there (a method's help is a class keyword) are the built-ins imported."""
        lines = {name: _declared_help(module, name) for name, module in self._built_ins()}
        if not all(lines.values()):
            self._load()
        lines |= {name: e.value.describe() if hasattr(e.value, "describe") else e.help
                  for name, e in self._entries.items()}
        return " | ".join(f"{name}: {lines[name]}" if lines[name] else name for name in self.names())

    def reload(self) -> None:
        """Read the folders again: the next look-up imports a module added since, and an entry whose file is gone
        is forgotten (with its module)."""
        files = set(self._files())
        for name, entry in list(self._entries.items()):
            module = getattr(entry.made_from, "__module__", "")
            if self._builtin(module) and name not in files:
                del self._entries[name]
                sys.modules.pop(module, None)
        importlib.invalidate_caches()
        self._loaded = False

    def _built_ins(self) -> list[tuple[str, str]]:
        """(name, module) of every built-in: each package's modules (not its subpackages, nor a _private module),
        and each single module, named as its file."""
        out = []
        for module in self.where:
            path = ROOT.joinpath(*module.split(".")[1:])
            if not path.is_dir():
                out.append((module.rsplit(".", 1)[-1], module))
                continue
            out += [(i.name, f"{module}.{i.name}") for i in pkgutil.iter_modules([str(path)])
                    if not i.ispkg and not i.name.startswith("_")]
        return out

    def _files(self) -> list[str]:
        """The built-ins' names, from their files (nothing imported)."""
        return [name for name, _ in self._built_ins()]

    def _builtin(self, module: str) -> bool:
        """Whether `module` is one of the built-in modules (inside a package of `where`, or one of its modules)."""
        return any(module == m or module.startswith(f"{m}.") and ROOT.joinpath(*m.split(".")[1:]).is_dir()
                   for m in self.where)

    def _load(self) -> None:
        """Import every built-in module once (each registers itself); one that registers no entry of its name
        stops here (TypeError), so that names() never lists what a look-up cannot find."""
        if self._loaded:
            return
        self._loaded = True  # before the imports: a module that looks up while it loads sees what is there
        try:
            for name, module in self._built_ins():
                importlib.import_module(module)
                if name not in self._entries:
                    raise TypeError(f"distill.registry: {module} registers no {self.key} named {name!r}")
        except BaseException:
            self._loaded = False
            raise


def _declared_help(module: str, name: str) -> str:
    """The help= that `module`'s file gives its `register(name, help=...)` call (a literal), read without importing
    it; "" when it gives none there."""
    tree = ast.parse(ROOT.joinpath(*module.split(".")[1:]).with_suffix(".py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == name):
            return next((k.value.value for k in node.keywords if k.arg == "help" and isinstance(k.value, ast.Constant)),
                        "")
    return ""


METHODS = Registry("kd.loss", "distill.methods", order=("kd",))  # the default first
SOURCES = Registry("data.source", "distill.data.sources", order=("demo", "hub", "parquet", "imagefolder", "disk"))
# the stages in the order `stage=all` runs them: export after the report, whose numbers its model card carries;
# publish only when asked (stage=publish, alone): a copy of the cache for others, made once, not on every run
STAGES = Registry("stage", "distill.stages", "distill.report",
                  order=("teacher", "cache", "student", "report", "export", "publish"), on_request=("publish",))
TEACHER_SOURCES = Registry("teacher.source", "distill.training.teachers", order=("train", "timm"))
