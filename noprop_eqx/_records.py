"""Run records without the paths of the machine that made them.

A results record is shared (committed next to the code, compared across machines), so it holds
paths relative to the working directory where it can, and otherwise only a path's last two
components after `…/`: `/home/me/runs/cifar/FM` run from `/home/me/code` is recorded as
`…/cifar/FM`.
"""

import os
import re
from pathlib import Path
from typing import Any

# An absolute POSIX path standing alone: not the tail of a URL ("https://a/b") or of a
# relative path ("a/b").
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/[^\s\"',;:)\]}]+")


def portable_path(path: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """`path` as a record holds it: unchanged when relative; relative to `cwd` (default: the
    working directory) when under it; else `…/` and its last two components."""
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    base = Path.cwd() if cwd is None else Path(cwd)
    try:
        return str(p.relative_to(base)) or "."
    except ValueError:
        return "…/" + "/".join(p.parts[-2:]) if len(p.parts) > 2 else "…/" + p.name


def scrub_paths(obj: Any, cwd: str | os.PathLike | None = None) -> Any:
    """`obj` (a JSON-like tree) with every absolute path inside its strings made portable."""
    if isinstance(obj, str):
        return _ABSOLUTE.sub(lambda m: portable_path(m.group(0), cwd), obj)
    if isinstance(obj, dict):
        return {k: scrub_paths(v, cwd) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(scrub_paths(v, cwd) for v in obj)
    return obj
