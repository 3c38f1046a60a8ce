"""The files of a run: JSON records written atomically, read back with clear errors, and kept
free of the paths of the machine that made them.

A results record is shared (committed next to the code, compared across machines), so it holds
paths relative to the working directory where it can, and otherwise only a path's last two
components after `…/`: `/home/me/runs/cifar/FM` run from `/home/me/code` is recorded as
`…/cifar/FM`.
"""

import json
import os
import re
from pathlib import Path
from typing import Any

# An absolute POSIX path standing alone: not the tail of a URL ("https://a/b"), of a relative
# path ("a/b") or of a path already made portable ("…/a/b").
_ABSOLUTE = re.compile(r"(?<![\w.:/~…-])/[^\s\"',;:)\]}]+")


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


class RunFileError(ValueError):
    """A file of a run folder (config, metrics, checkpoint, results list) is missing or damaged.
    The message names the file and says what to do; nothing is overwritten."""


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as JSON atomically: a temporary file renamed over `path`, so a kill at any
    moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON in `path`; a `RunFileError` naming the file if it is missing or unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFileError(f"{what} {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFileError(
            f"{what} {path} is damaged ({type(e).__name__}: {e}); restore it from a copy, or "
            "move the file (or its run folder) away to start afresh"
        ) from None


def write_metrics(path: str | os.PathLike, rows: list[dict]) -> None:
    """Writes the per-epoch rows as JSON lines, atomically (the whole file each epoch: it holds
    one short line per epoch)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The per-epoch rows of a `metrics.jsonl` (none if the file does not exist). A last line
    without its newline, which a kill during an append by an older version leaves behind, is
    dropped (its epoch was not checkpointed, so a resume trains it again); any other damaged
    line is a `RunFileError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines) and not text.endswith("\n"):
                break  # a half-written last line
            raise RunFileError(
                f"{path}, line {number}, is damaged ({e}); restore the file, or delete the "
                "damaged lines (the checkpoint decides where a resumed run continues)"
            ) from None
    return rows


def _read_results(path: Path) -> list:
    """The records of a `--results` file (none if it does not exist yet); a `RunFileError` for a
    name other than `*.json`, a folder, or a file that is not a JSON list."""
    if path.suffix != ".json":
        raise RunFileError(f"expected a results file named *.json, got {path}")
    if path.is_dir():
        raise RunFileError(f"expected a results file, got the folder {path}")
    if not path.exists():
        return []
    records = read_json(path, "results file")
    if not isinstance(records, list):
        raise RunFileError(
            f"expected {path} to hold a JSON list of run records, got a "
            f"{type(records).__name__}; choose another --results file"
        )
    return records


def check_results_file(path: str | os.PathLike) -> None:
    """Refuses, before any training, a `--results` file a record cannot be appended to: not a
    `.json` name, a folder, or an existing file that is not a JSON list."""
    _read_results(Path(path))


def append_result(path: str | os.PathLike, record: dict) -> None:
    """Appends `record` to the JSON list in `path` (created if missing), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, [*_read_results(path), record])
