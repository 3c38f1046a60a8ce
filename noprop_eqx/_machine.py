"""What a run records about the machine and the code that made it."""

import os
import platform
import subprocess
from pathlib import Path

import jax


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (else `platform.processor()`, else None). Also
    used by the benchmark scripts."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device_name() -> str:
    """The device a run trains on, e.g. "NVIDIA H200 (gpu)" or "cpu (AMD EPYC, 2 cores)"."""
    d = jax.devices()[0]
    if d.platform != "cpu":
        return f"{d.device_kind} ({d.platform})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu ({cpu_model() or 'unknown CPU'}, {cores} cores)"


def git_commit(cwd: Path | None = None, *, short: bool = True) -> str | None:
    """The commit checked out at `cwd` (default: this package's folder), or None outside git.
    Also used by the benchmark scripts."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
            cwd=Path(__file__).resolve().parent if cwd is None else cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
