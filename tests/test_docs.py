"""The documentation site builds in strict mode: every page in the nav exists, every link and
anchor resolves, every `::: object` is importable and every cross-reference in a docstring
resolves (mkdocs.yml sets the validation to warn, and --strict turns warnings into failures)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason='mkdocs is not installed: pip install -e ".[docs]" (the dev extra includes it)',
)
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner, not a build warning
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed (exit {result.returncode}):\n{result.stderr[-6000:]}"
    )
    for page in ("index.html", "results/index.html", "api/variants/index.html"):
        assert (tmp_path / "site" / page).is_file(), f"missing {page} in the built site"
    api = (tmp_path / "site" / "api" / "variants" / "index.html").read_text(encoding="utf-8")
    assert 'id="noprop_eqx.NoPropDT"' in api, "the API page did not render NoPropDT"
