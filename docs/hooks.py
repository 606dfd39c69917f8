"""MkDocs hooks: the pages that are generated from the code at build time, never written by hand.

A page holding the line `<!-- generated: recipes -->` gets the recipe table (recipes/recipe/*.yaml, each file's
header line, as `--help` prints it); one holding `<!-- generated: settings -->` gets the settings reference (every
key of the schema in distill/config.py: type, default, allowed values, the outputs it changes, its help line).
tests/test_docs.py imports this file to check both without MkDocs.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from distill import config  # noqa: E402

OUTPUT_WORDS = {(): "none", config.ALL: "all"}


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _show(value) -> str:
    """A value as it is written in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value == int(value) and abs(value) < 1e6:
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _type(f: dataclasses.Field) -> str:
    text = str(f.type).replace("typing.", "").replace("Optional[", "optional ").rstrip("]").replace("[", " of ")
    return text.replace("List", "list").replace("Dict", "dict").replace(" of Any", "")


def allowed(f: dataclasses.Field) -> str:
    """The rules a value must meet: choices, range, list length (what validation checks)."""
    meta = f.metadata
    parts = []
    choices = meta.get("choices")
    if choices is not None:
        parts.append(", ".join(f"`{c}`" for c in (choices() if callable(choices) else choices)))
    bounds = [f"{sign} {_show(meta[rule])}" for rule, _, sign in config.RANGES if rule in meta]
    if bounds:
        parts.append(", ".join(bounds) + (" (each)" if "List" in str(f.type) else ""))
    if "count" in meta:
        parts.append(f"{meta['count']} values")
    return "; ".join(parts)


def _cell(text: str) -> str:
    """Text for a table cell: its pipes escaped, and its <run>-style placeholders kept from reading as HTML."""
    return str(text).replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def settings_markdown() -> str:
    """The settings reference: one table per top-level section, one row per key of config.leaves()."""
    from distill.store import fingerprints  # the outputs each key changes, as the fingerprints take them

    rows: dict[str, list[str]] = {}
    tags = fingerprints.tags()
    for key, f, sections in config.leaves():
        section = key.split(".")[0] if sections else "top level"
        outputs = tags[key]
        said = OUTPUT_WORDS.get(outputs, ", ".join(outputs or ()))
        rows.setdefault(section, []).append(
            f"| `{key}` | {_cell(_type(f))} | `{_cell(_show(_default(f)))}` | {_cell(allowed(f))} | {said} | "
            f"{_cell(config._doc(f))} |")
    out = []
    for section, lines in rows.items():
        out += ["## Top level" if section == "top level" else f"## `{section}`", "",
                "| key | type | default | allowed | changes | meaning |", "| --- | --- | --- | --- | --- | --- |",
                *lines, ""]
    return "\n".join(out)


def recipes_markdown() -> str:
    """The recipe table: each recipes/recipe/NAME.yaml with its header line (config.recipe_lines)."""
    lines = config.recipe_lines(ROOT / "recipes" / "recipe")
    return "\n".join(["| recipe | what it is |", "| --- | --- |",
                      *(f"| `{name}` | {_cell(line)} |" for name, line in lines.items())]) + "\n"


GENERATED = {"<!-- generated: settings -->": settings_markdown, "<!-- generated: recipes -->": recipes_markdown}


def on_page_markdown(markdown: str, page=None, config=None, files=None) -> str:
    """MkDocs hook: replace each generation marker in a page with what it stands for."""
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
