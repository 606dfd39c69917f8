"""The command line before Hydra reads it, and the machine's errors after: a recipe that does not exist, a key the
schema does not have (or has renamed), an override Hydra cannot parse (most often a path with a space the shell
split) and a folder that cannot be written become one line saying what to do."""
from __future__ import annotations

import difflib
import errno
import re
import shlex
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distill import config
from distill.errors import ConfigError
from distill.registry import METHODS


# errno of an OSError that is the machine's state, not a bug: permissions, read-only file system, full disk or quota
FILE_PROBLEMS = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.EROFS: "on a read-only file system", errno.ENOSPC: "no space left on the device",
                 errno.EDQUOT: "over the disk quota"}


def file_problem(e: OSError, raw: DictConfig | None = None, key: str | None = None) -> str | None:
    """One line for an OSError that a person fixes (FILE_PROBLEMS): the path, what is wrong, the setting naming that
    place (`key` when given; else found in raw, when given; run_root otherwise) and what to do; None for any other
    OSError (a bug: left to show its traceback)."""
    what = FILE_PROBLEMS.get(e.errno)
    if what is None:
        return None
    path = Path(e.filename).absolute() if e.filename else None
    for candidate in ("data.path", "teacher.dir", "cache.root") if key is None else ():  # may lie inside run_root
        value = OmegaConf.select(raw, candidate, default=None, throw_on_resolution_failure=False) if raw else None
        if path is not None and value and (path == Path(str(value)).absolute() or
                                           Path(str(value)).absolute() in path.parents):
            key = candidate
            break
    key = key or "run_root"
    if e.errno in (errno.EACCES, errno.EPERM):
        fix = f"make it {'readable' if key == 'data.path' else 'writable'} for this user, or give {key}= another place"
    elif e.errno == errno.EROFS:
        fix = f"give {key}= a place on a writable disk"
    else:
        fix = f"free some space, or give {key}= a place on another disk"
    where = path or (OmegaConf.select(raw, "run_root", default="runs") if raw else "runs")
    return (f"{where}: {what} ({e.strerror}); {fix}, and run again (nothing was damaged: finished stages are kept and "
            "reused)")


def check_recipe(args: list[str], folder: Path) -> None:
    """`recipe=NAME` names a recipe file in `folder`; else one line listing the recipes there (close ones first)."""
    name = next((a.split("=", 1)[1] for a in args if a.startswith("recipe=")), None)
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    if name is None or name in known:  # a name only: a path (recipe=../data/demo) would read another file
        return
    if "/" in name or "\\" in name:
        raise ConfigError(f"recipe: '{name}' is a path, not a recipe name (a file of recipes/recipe/, named without "
                          f"its folder or .yaml); recipes: {', '.join(known)}")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"recipe: no recipe '{name}'{hint}; recipes: {', '.join(known)}")


# Hydra's settings of where it writes that distill does not read: a run writes where run_root and name say
UNREAD_HYDRA = {"hydra.run.dir": "a run writes into <run_root>/<name>/: set run_root= and name= instead"}


def check_overrides(args: list[str], groups: set[str]) -> None:
    """Reject a command-line override of a key the schema does not have, or has renamed (config.RENAMED), in one
    line, before Hydra composes, and a section given a key it lacks or a value that is no section
    (config.check_given). `+key=...` additions and Hydra's own keys pass through, as do config-group choices given
    by name (validation sees them later; a number or a dict there stops here). Reads only the key names and values,
    so it answers before torch loads, unless a key sits in a method's section (kd.NAME.KEY), whose keys the
    method's file declares."""
    keys = [key for key, _, _ in config.leaves(config.ConfigBase)]
    for arg in args:
        if arg.startswith(("-", "+")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("~")
        values = _values(arg)
        if key.split("@")[0] in groups:
            if any(not isinstance(v, (str, list, dict)) for v in values):  # Hydra: a traceback
                raise ConfigError(f"{key}: a config group: give one of its options by name (a file NAME.yaml in "
                                  f"recipes/{key.split('@')[0]}/; --help lists them)")
            if not (key in {k.split(".")[0] for k in keys} and any(isinstance(v, dict) for v in values)):
                continue  # an option's name; a dict given to a section of that name (student={...}) is checked
        if key in UNREAD_HYDRA:
            raise ConfigError(f"{key}: not read by distill; {UNREAD_HYDRA[key]}")
        if key.startswith("hydra"):
            continue
        if key in config.RENAMED:
            raise ConfigError(f"{key}: renamed to {config.RENAMED[key]}")
        if key == "kd" or any(config.names_section(key, name) for name in METHODS.names()):
            keys = [k for k, _, _ in config.leaves()]  # the methods' sections too (loads their files)
        for value in values or [{}]:  # a section given whole ({alpha: 2}) holds its own keys only
            config.check_given(key, value, keys)


def _values(arg: str) -> list:
    """The values an override gives its key, as Hydra parses them (each of a discrete sweep's); [] when they are not
    known here (an interval sweep, or what Hydra cannot parse: check_syntax answers that)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        o = OverridesParser.create().parse_override(arg)
    except HydraException:
        return []
    if not o.is_sweep_override():
        return [o.value()]
    return list(o.sweep_iterator()) if o.is_discrete_sweep() else []


def hydra_args(args: list[str]) -> tuple[list[str], bool]:
    """The command line as Hydra reads it: its overrides (flags and their values left out) and whether it runs a
    sweep (-m, and no --help, --cfg or --info, which only print)."""
    from hydra._internal.utils import get_args_parser

    known = get_args_parser().parse_known_args(args)[0]
    return list(known.overrides or []), bool(known.multirun and not prints(args))


def prints(args: list[str]) -> bool:
    """Whether the command line only prints (--help, --hydra-help, --cfg, --info, shell completion): it runs nothing."""
    from hydra._internal.utils import get_args_parser

    known = get_args_parser().parse_known_args(args)[0]
    return bool(known.help or known.hydra_help or known.cfg or known.info or known.shell_completion)


def check_syntax(args: list[str]) -> None:
    """Every override in Hydra's grammar, else ConfigError naming it and how to write it (Hydra would answer with its
    parser's error): most often a value with a space that the shell split (data.path=/tmp/my data/x.parquet), or a
    value with characters that Hydra reads only in quotes (' & # ( ) = and letters beyond ASCII)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()

    def parses(item: str) -> bool:
        try:
            parser.parse_override(item)
            return True
        except HydraException:
            return False

    overrides = hydra_args(args)[0]
    for i, item in enumerate(overrides):
        if parses(item):
            continue
        key, eq, value = item.partition("=")
        if not eq:  # a word of its own: the rest of the value before it, when the shell split that at a space
            j = i - 1
            while j >= 0 and "=" not in overrides[j]:
                j -= 1
            if j < 0:
                raise ConfigError(f"{item}: not a setting (a setting is key=value; python distill/run.py --help "
                                  "lists them)")
            key, _, value = overrides[j].partition("=")
            k = j + 1
            while k < len(overrides) and "=" not in overrides[k]:
                k += 1
            value = " ".join([value, *overrides[j + 1:k]])
            raise ConfigError(f"{key}: its value has a space, and the shell split it ({item} came apart from it); "
                              f"quote the whole value: {_quoted(key, value)}")
        if not parses(f"{key}=0"):
            raise ConfigError(f"{key}: not a key Hydra can read (keys are dotted names, e.g. data.path)")
        if value.lstrip().startswith(("[", "{")) or re.match(r"\s*\w+\(", value):
            raise ConfigError(f"{key}: Hydra cannot read the value {value} (check its brackets and commas; the "
                              "grammar: https://hydra.cc/docs/advanced/override_grammar/basic)")
        raise ConfigError(f"{key}: Hydra reads the value {value} only in quotes; quote it: {_quoted(key, value)}")


def _quoted(key: str, value: str) -> str:
    """key=value quoted for Hydra (the value) and for the shell (the whole), as a person would type it."""
    if '"' not in value:
        inner = f'"{value}"'
    elif "'" not in value:
        inner = f"'{value}'"
    else:
        inner = '"' + value.replace('"', '\\"') + '"'
    return shlex.quote(f"{key}={inner}")


def replace_dicts(args: list[str]) -> list[str]:
    """The command line with each dict given to a dict setting (student.model_args={img_size: 32}) made to replace
    the recipe's dict, as a person reading it expects: Hydra would merge it into the recipe's, and refuse a key the
    recipe's lacks. Done by setting the key to null first."""
    dicts = {key for key, f, _ in config.leaves(config.ConfigBase) if "Dict" in str(f.type)}
    out = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key in dicts and value.lstrip().startswith("{"):
            out.append(f"{key}=null")
        out.append(arg)
    return out
