"""Counts of the code's shape (issue 41): string-key reads on records, import circles, extension idioms.

    python tools/count_code.py                 # the three counts, with a per-file breakdown
    python tools/count_code.py --reads         # + every counted read, file:line
    python tools/count_code.py --excluded      # + every read left out, with the rule that left it out
    python tools/count_code.py --root DIR      # another checkout's distill/ (e.g. a `git worktree` of the base)

(i) String-key reads on records outside distill/store/. Counted, in every distill/**/*.py outside distill/store/
and distill/files.py (where records are (de)serialized and sealed, so a key may appear there): each subscript by a
string literal, `X["key"]`, and each call `X.get("key", ...)` with a string literal first argument, found with the
`ast` module, whether the read is a load or the target of an assignment. Left out, by the receiver `X` (its
source text), are the reads on what is not a record passed between modules; each rule below says what it leaves
out (--excluded lists every read it left out, to check that none is a record):
    - type annotations: list["RunContext"], dict[...] and the like;
    - the environment: os.environ, environ;
    - keyword arguments: kwargs, options, flags (a function's or class's own **kwargs), model_args (the keyword
      arguments given to timm.create_model);
    - Hydra and omegaconf nodes and the config schema: OmegaConf.*, HydraConfig.*; and, in config.py, cli.py and
      sweep.py only (the names are common words), raw, tree, entry (a `teachers` entry of the composed config),
      rules and X.metadata (a schema field's rules);
    - torch: X.state_dict(), X.param_groups[...];
    - `datasets`: rows, features, cache files and batch columns (item, it, value, batch, fields, tensors, f in
      content.py and splits.py, a parquet schema's features in parquet._classes), and anything read inside a
      dataset's __getitem__ (the item being built for the collate);
    - numpy structured records (the cache's shard rows, typed by their dtype): rec, records, X.dtype;
    - timm: X.pretrained_cfg, and the exported folder's config.json (timm's Hugging Face layout) in predict.py;
    - regular expression matches: a name bound to X.match/search/fullmatch(...);
    - mappings keyed by a name that is data, not a field (a split, a model, a stage, a teacher, a setting's key):
      images, models, rows, results, outputs, splits, places, trains, wanted, left_out (X.images and so on too).
The rules go by names: a record read through another name is counted (never hidden), and a record given one of
these names would be left out, hence --excluded.

(ii) Import circles among distill's modules: the graph of module-level imports (`import distill.X`, `from distill
import X`, `from distill.X import Y`; an import under `if TYPE_CHECKING:` is a hint only, and an import inside a
function runs when the function does), with an edge to each package a module's import runs the __init__ of; each
strongly connected component of more than one module is a circle. The same graph with the imports inside functions
too is shown beside it (a circle there is one that a call can close at run time), and with the type hints' imports
under TYPE_CHECKING as well (a circle there is one of names: two modules that each need the other's types).

(iii) Extension idioms: the mechanisms by which a new method, data source, stage or teacher source is added, found
by name: a decorator or function named register*/register_*, a module-level name holding REGISTRY, a class with
__init_subclass__ (registration by subclassing), a package scan (pkgutil.iter_modules), and a function that returns
a hand-kept table of stages (*_functions). Each is listed with where it is; the count is of distinct kinds. An
__init_subclass__ counts only when it registers (calls a register* function); Hydra's register_schema (the schema
stored in Hydra's ConfigStore) is no extension point; distill/registry.py's own register decorator and folder scan
are one kind, the registry.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HYDRA = {"register_schema"}  # the schema stored in Hydra's ConfigStore: no extension point
ANNOTATIONS = {"list", "dict", "tuple", "set", "frozenset", "type", "Optional", "Union", "Callable", "Dict", "List",
               "Tuple", "Literal", "Sequence", "Iterable", "Mapping", "ClassVar"}
# (rule, files it applies in (None: every file), function it applies in (None: any), receiver pattern)
RULES = [
    ("the environment", None, None, r"(os\.)?environ"),
    ("keyword arguments", None, None, r"kwargs|options|flags|model_args|model_args or \{\}"),
    ("Hydra/omegaconf nodes and the config schema", None, None, r".*OmegaConf\..*|.*HydraConfig\..*"),
    ("Hydra/omegaconf nodes and the config schema", ("config.py", "cli.py", "sweep.py"), None,
     r"raw|tree|entry|rules|.*\.metadata"),
    ("torch state_dict and optimizer param_groups", None, None, r".*state_dict\(\).*|.*param_groups\[.*"),
    ("`datasets` rows, features, cache files and batch columns", None, None, r"item|it|value|batch|fields|tensors"),
    ("`datasets` cache files", ("content.py", "splits.py"), None, r"f"),
    ("`datasets` features in a parquet schema", ("parquet.py",), r"_classes", r".*"),
    ("a dataset item being built (__getitem__)", None, r"__getitem__", r".*"),
    ("numpy structured records (the cache's shard rows)", None, None, r"rec|records|(.*\.)?dtype"),
    ("timm's pretrained_cfg", None, None, r".*\.pretrained_cfg"),
    ("timm's config.json of an exported folder", ("predict.py",), None, r"config"),
    ("mappings keyed by a name (split, model, stage, teacher, setting)", None, None,
     r"(.*\.)?(images|models|rows|results|outputs|splits|places|trains|wanted|left_out)"),
]
MATCHERS = {"match", "search", "fullmatch"}


def _key(node: ast.AST) -> tuple[ast.AST, str] | None:
    """(receiver, key) of a string-key read, or None."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.value, node.slice.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.func.value, node.args[0].value
    return None


def _functions(tree: ast.AST) -> dict[int, str]:
    """id(node) -> the name of the innermost function it is in."""
    where: dict[int, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else name
            where[id(child)] = inner
            visit(child, inner)
    visit(tree, "")
    return where


def _matches(tree: ast.AST) -> set[str]:
    """Names bound to a regular expression match (X.match(...), re.search(...), ...)."""
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr in MATCHERS):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _rule(receiver: ast.AST, path: Path, function: str, matches: set[str]) -> str | None:
    """The rule that leaves this read out, or None (it is counted)."""
    text = ast.unparse(receiver)
    if isinstance(receiver, ast.Name) and receiver.id in ANNOTATIONS:
        return "type annotations"
    if isinstance(receiver, ast.Name) and receiver.id in matches:
        return "regular expression matches"
    for rule, where, func, pattern in RULES:
        if where is not None and path.name not in where:
            continue
        if func is not None and not re.fullmatch(func, function):
            continue
        if re.fullmatch(pattern, text):
            return rule
    return None


def reads(package: Path) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str, str]]]:
    """(counted reads, excluded reads) in `package` outside its store/: (file, line, source[, rule])."""
    counted, excluded = [], []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent)
        if "store" in rel.parts[1:-1] or rel == Path("distill/files.py"):
            continue
        tree = ast.parse(path.read_text())
        functions, matches = _functions(tree), _matches(tree)
        for node in ast.walk(tree):
            found = _key(node)
            if found is None:
                continue
            rule = _rule(found[0], path, functions.get(id(node), ""), matches)
            source = ast.unparse(node)[:90]
            if rule is None:
                counted.append((str(rel), node.lineno, source))
            else:
                excluded.append((str(rel), node.lineno, source, rule))
    return sorted(counted), sorted(excluded)


def _module_name(package: Path, path: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _hinted(tree: ast.AST) -> set[int]:
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING" for n in ast.walk(node)}


def _imported(node: ast.AST, modules: set[str]) -> set[str]:
    """The distill modules one import statement names."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "distill"}
    if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("distill"):
        return set()
    return {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}


def import_graph(package: Path, in_functions: bool, hints: bool = False) -> dict[str, set[str]]:
    """Module -> the distill modules its import runs (module level, or every import when `in_functions`; with
    `hints`, the imports under `if TYPE_CHECKING:` too)."""
    paths = {_module_name(package, p): p for p in package.rglob("*.py")}
    modules, graph = set(paths), {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text())
        hinted = set() if hints else _hinted(tree)
        statements = ast.walk(tree) if in_functions else _module_level(tree)
        edges = set()
        for node in statements:
            if id(node) in hinted:
                continue
            for target in _imported(node, modules):
                parts = target.split(".")
                # the module, and each package whose __init__ the import runs (not the root, not one of its own)
                edges |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        graph[name] = {e for e in edges if e in modules and e not in own}
    return graph


def _module_level(tree: ast.Module):
    """The statements that run when the module is imported: top level, and inside top-level if/try/with blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                     *[s for h in getattr(node, "handlers", []) for s in h.body]]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))
    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(out)


def _calls_register(node: ast.AST) -> bool:
    """Whether a function's body calls a register* function (so that subclassing registers)."""
    return any(isinstance(c, ast.Call) and re.match(r"_?register", ast.unparse(c.func).rsplit(".", 1)[-1])
               for c in ast.walk(node))


def _mechanisms(node: ast.AST) -> list[str]:
    """The kinds of extension mechanism one AST node is (usually none)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        kinds = []
        if re.match(r"_?register", node.name) and node.name not in HYDRA:
            kinds.append("register function or decorator")
        if node.name == "__init_subclass__" and _calls_register(node):
            kinds.append("registration by subclassing (__init_subclass__)")
        if node.name.endswith("_functions"):
            kinds.append("a hand-kept table (*_functions)")
        return kinds
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and "REGISTRY" in t.id.upper()
                                            for t in node.targets):
        return ["a REGISTRY table"]
    if isinstance(node, ast.Attribute) and node.attr == "iter_modules":
        return ["a package scan (pkgutil.iter_modules)"]
    return []


def idioms(package: Path) -> dict[str, list[str]]:
    """Each kind of extension mechanism found -> where (module: name or line). The mechanisms inside
    distill/registry.py (its register decorator and its folder scan) are one kind: the registry."""
    found = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        module, tree = _module_name(package, path), ast.parse(path.read_text())
        for node in ast.walk(tree):
            for kind in _mechanisms(node):
                where = f"{module}: {getattr(node, 'name', None) or f'line {node.lineno}'}"
                found["the registry (distill/registry.py)" if module == "distill.registry" else kind].append(where)
    return dict(found)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout whose distill/ is counted")
    ap.add_argument("--reads", action="store_true", help="list every counted read")
    ap.add_argument("--excluded", action="store_true", help="list every read left out, with its rule")
    args = ap.parse_args(argv)
    package = args.root / "distill"
    counted, excluded = reads(package)
    print(f"(i) string-key reads on records outside distill/store/: {len(counted)} "
          f"({len(excluded)} reads on what is not a record left out)")
    for name, n in sorted(Counter(f for f, _, _ in counted).items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {n:4d}  {name}")
    if args.reads:
        for f, line, source in counted:
            print(f"        {f}:{line}: {source}")
    if args.excluded:
        for rule, n in Counter(r for *_, r in excluded).most_common():
            print(f"    left out, {rule}: {n}")
        for f, line, source, rule in excluded:
            print(f"        {f}:{line}: {source}  [{rule}]")
    for label, in_functions, hints in (("module-level imports", False, False),
                                       ("imports inside functions too", True, False),
                                       ("imports inside functions and under TYPE_CHECKING too", True, True)):
        found = circles(import_graph(package, in_functions, hints))
        print(f"(ii) import circles ({label}): {len(found)}")
        for component in found:
            print(f"    {' <-> '.join(component)}")
    kinds = idioms(package)
    print(f"(iii) extension idioms: {len(kinds)} kinds")
    for kind, where in kinds.items():
        print(f"    {kind}: {', '.join(where)}")


if __name__ == "__main__":
    main()
