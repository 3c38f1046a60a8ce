"""Run records keep no path of the machine that made them."""

from noprop_eqx._records import portable_path, scrub_paths


def test_portable_path():
    assert portable_path("runs/FM") == "runs/FM"  # relative: unchanged
    assert portable_path("/home/me/code/runs/FM", cwd="/home/me/code") == "runs/FM"
    assert portable_path("/home/me/code", cwd="/home/me/code") == "."
    assert portable_path("/scratch/me/runs/FM", cwd="/home/me/code") == "…/runs/FM"
    assert portable_path("/data", cwd="/home/me/code") == "…/data"


def test_scrub_paths_walks_records_and_spares_urls():
    record = {
        "command": "noprop-eqx train --out /scratch/me/runs --data-dir=/data/sets/mnist",
        "list": ["/home/me/code/benchmarks/results", "results/x.json", 3, None],
        "url": "https://github.com/owner/repo/blob/main/x.py",
    }
    assert scrub_paths(record, cwd="/home/me/code") == {
        "command": "noprop-eqx train --out …/me/runs --data-dir=…/sets/mnist",
        "list": ["benchmarks/results", "results/x.json", 3, None],
        "url": "https://github.com/owner/repo/blob/main/x.py",
    }


def test_scrub_paths_is_idempotent():
    once = scrub_paths("--out /scratch/me/runs/x", cwd="/home/me/code")
    assert once == "--out …/runs/x" and scrub_paths(once, cwd="/home/me/code") == once
