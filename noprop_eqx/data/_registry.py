"""`load_dataset`: one entry point that finds a dataset by name."""

import os
from collections.abc import Callable
from pathlib import Path

from ._cifar import _CIFAR10, _CIFAR100, _how_to_provide, _load_official, _Release
from ._dataset import ImageDataset
from ._digits import load_digits
from ._errors import DatasetNotFoundError
from ._hf import load_hf_dataset
from ._mnist import load_mnist

# The switches with which huggingface_hub / datasets go offline, and the values that mean "on".
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}

_Attempt = tuple[str, Callable[[], ImageDataset]]


def _data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    data_dir = data_dir if data_dir is not None else os.environ.get("NOPROP_DATA_DIR") or None
    return None if data_dir is None else Path(data_dir).expanduser()


def _first_found(name: str, attempts: list[_Attempt], how: str | None = None):
    """Return the first attempt that finds the data, else one error listing them all."""
    failures = []
    for source, attempt in attempts:
        try:
            return attempt()
        except DatasetNotFoundError as e:
            failures.append(f"- {source}: {e}")
    if how is None:
        how = (
            "Pass data_dir=... or set NOPROP_DATA_DIR to a folder holding the data, or go online "
            "for the hub."
        )
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Tried:\n" + "\n".join(failures) + "\n" + how
    )


def _hub(hub: str, load: Callable[[], ImageDataset]) -> _Attempt:
    """The hub as an attempt, or, when an offline switch is set, a record that it was skipped
    (the hub libraries would otherwise spend their retries before failing)."""
    source = f"HuggingFace hub {hub!r}"
    offline = [v for v in _OFFLINE_VARS if os.environ.get(v, "").strip().upper() in _TRUE]
    if not offline:
        return source, load

    def skipped() -> ImageDataset:
        switches = ", ".join(f"{v}={os.environ[v]}" for v in offline)
        raise DatasetNotFoundError(f"skipped, not tried: offline ({switches} is set)")

    return source, skipped


def _mnist(data_dir: Path | None, *, verify_md5: bool, labels: str) -> ImageDataset:
    attempts = []
    if data_dir is not None:
        local = lambda: load_mnist(data_dir, verify=verify_md5)
        attempts.append((f"IDX files in {data_dir}", local))
    attempts.append(_hub("ylecun/mnist", lambda: load_hf_dataset("ylecun/mnist", name="mnist")))
    return _first_found("mnist", attempts)


def _official(release: _Release, kind: str, path: Path, **options) -> _Attempt:
    what = {"tarball": "official tarball", "folder": "extracted folder"}[kind]

    def attempt() -> ImageDataset:
        if not (path.is_file() if kind == "tarball" else path.is_dir()):
            raise DatasetNotFoundError(f"no such {'file' if kind == 'tarball' else 'folder'}")
        # Once found, broken data raises DataIntegrityError: never a fallback to the next place.
        return _load_official(release, kind, path, **options)

    return f"{what} {path}", attempt


def _cifar(release: _Release, folders: tuple[str, ...], hub: str):
    def load(data_dir: Path | None, *, verify_md5: bool, labels: str) -> ImageDataset:
        columns = {}
        if release is _CIFAR100:
            columns["label_column"] = {"fine": "fine_label", "coarse": "coarse_label"}[labels]
        suffix = "" if labels == "fine" else f"-{labels}"
        attempts = []
        if data_dir is not None:
            options = dict(labels=labels, verify_md5=verify_md5)
            attempts.append(_official(release, "tarball", data_dir / release.tarball, **options))
            attempts.append(_official(release, "folder", data_dir / release.folder, **options))
            candidates = [data_dir / f for f in folders]
            if (data_dir / "dataset_dict.json").is_file():
                candidates.append(data_dir)
            for path in candidates:
                # The folder's own name (e.g. "cifar10-jpeg") says which copy was used.
                name = path.name + suffix
                local = lambda p=path, n=name: load_hf_dataset(p, name=n, **columns)
                attempts.append((f"local folder {path}", local))
        remote = lambda: load_hf_dataset(hub, name=release.name + suffix, **columns)
        attempts.append(_hub(hub, remote))

        where = "<data_dir>" if data_dir is None else str(data_dir)
        hf_folders = " or ".join(os.path.join(where, f) for f in folders)
        forms = [
            *_how_to_provide(release, where),
            f"a HuggingFace dataset: a DatasetDict.save_to_disk folder at {hf_folders} (or "
            f"{where} itself), or, online (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset), the "
            f"hub's {hub!r}",
        ]
        how = f"To provide {release.title}, use one of:\n- " + "\n- ".join(forms)
        if data_dir is None:
            how = "No data_dir given: pass data_dir=... or set NOPROP_DATA_DIR. " + how
        return _first_found(release.name, attempts, how)

    return load


_LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "digits": lambda data_dir, **options: load_digits(),
    "mnist": _mnist,
    "cifar10": _cifar(_CIFAR10, ("cifar10-jpeg", "cifar10"), "uoft-cs/cifar10"),
    "cifar100": _cifar(_CIFAR100, ("cifar100",), "uoft-cs/cifar100"),
}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    verify_md5: bool = True,
    labels: str = "fine",
) -> ImageDataset:
    """Load a dataset by name from local copies, else the HuggingFace hub; never downloads a
    file itself.

    - `"digits"`: scikit-learn's 8x8 digits ([`load_digits`][]), always available.
    - `"mnist"`: the IDX files in `data_dir` or `data_dir/mnist` ([`load_mnist`][]), else the
        hub's `ylecun/mnist`.
    - `"cifar10"`, in this order: the official tarball `data_dir/cifar-10-python.tar.gz`, its
        extracted folder `data_dir/cifar-10-batches-py` ([`load_cifar10`][]), a `save_to_disk`
        folder `data_dir/cifar10-jpeg` or `data_dir/cifar10` (or `data_dir` itself), else the
        hub's `uoft-cs/cifar10`.
    - `"cifar100"`: likewise with `cifar-100-python.tar.gz`, `cifar-100-python`
        ([`load_cifar100`][]), `data_dir/cifar100` and `uoft-cs/cifar100`.

    When `HF_HUB_OFFLINE` or `HF_DATASETS_OFFLINE` is set, the hub is not tried at all, so a
    missing dataset fails at once.

    **Arguments:**

    - `name`: one of the names above.
    - `data_dir`: where local copies live; defaults to the `NOPROP_DATA_DIR` environment
        variable.
    - `verify_md5`: check the md5 of official files (MNIST IDX files, CIFAR tarballs and
        extracted files) against the published values.
    - `labels`: for `"cifar100"`, `"fine"` (100 classes) or `"coarse"` (20 superclasses).

    **Raises:** `ValueError` for an unknown name or `labels`; [`DatasetNotFoundError`][] listing
    every path and source tried, and how to provide the data, when none has it;
    [`DataIntegrityError`][] when a copy is found but broken (it is not skipped).
    """
    if name not in _LOADERS:
        raise ValueError(f"expected a dataset name in {sorted(_LOADERS)}, got {name!r}")
    if labels not in ("fine", "coarse"):
        raise ValueError(f"expected labels 'fine' or 'coarse', got {labels!r}")
    if labels != "fine" and name != "cifar100":
        raise ValueError(
            f"expected labels='fine' for {name!r} (coarse labels exist only for 'cifar100'), "
            f"got {labels!r}"
        )
    return _LOADERS[name](_data_dir(data_dir), verify_md5=verify_md5, labels=labels)
