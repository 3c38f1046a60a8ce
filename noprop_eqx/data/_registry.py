"""`load_dataset`: one entry point that finds a dataset by name."""

import os
from collections.abc import Callable
from pathlib import Path

from ._dataset import ImageDataset
from ._digits import load_digits
from ._errors import DatasetNotFoundError
from ._hf import load_hf_dataset
from ._mnist import load_mnist


def _data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    data_dir = data_dir if data_dir is not None else os.environ.get("NOPROP_DATA_DIR") or None
    return None if data_dir is None else Path(data_dir).expanduser()


def _first_found(name: str, attempts: list[tuple[str, Callable[[], ImageDataset]]]):
    """Return the first attempt that finds the data, else one error listing them all."""
    failures = []
    for source, attempt in attempts:
        try:
            return attempt()
        except DatasetNotFoundError as e:
            failures.append(f"- {source}: {e}")
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Tried:\n" + "\n".join(failures) + "\nPass data_dir=... "
        "or set NOPROP_DATA_DIR to a folder holding the data, or go online for the hub."
    )


def _mnist(data_dir: Path | None) -> ImageDataset:
    attempts = []
    if data_dir is not None:
        attempts.append((f"IDX files in {data_dir}", lambda: load_mnist(data_dir)))
    hub = lambda: load_hf_dataset("ylecun/mnist", name="mnist")
    attempts.append(("HuggingFace hub 'ylecun/mnist'", hub))
    return _first_found("mnist", attempts)


def _cifar(name: str, folders: tuple[str, ...], hub: str, **columns):
    def load(data_dir: Path | None) -> ImageDataset:
        attempts = []
        if data_dir is not None:
            candidates = [data_dir / f for f in folders]
            if (data_dir / "dataset_dict.json").is_file():
                candidates.append(data_dir)
            for path in candidates:
                # The folder's own name (e.g. "cifar10-jpeg") says which copy was used.
                local = lambda p=path: load_hf_dataset(p, name=p.name, **columns)
                attempts.append((f"local folder {path}", local))
        remote = lambda: load_hf_dataset(hub, name=name, **columns)
        attempts.append((f"HuggingFace hub {hub!r}", remote))
        return _first_found(name, attempts)

    return load


_LOADERS: dict[str, Callable[[Path | None], ImageDataset]] = {
    "digits": lambda data_dir: load_digits(),
    "mnist": _mnist,
    "cifar10": _cifar("cifar10", ("cifar10-jpeg", "cifar10"), "uoft-cs/cifar10"),
    "cifar100": _cifar("cifar100", ("cifar100",), "uoft-cs/cifar100", label_column="fine_label"),
}


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Load a dataset by name, trying local copies first, then the HuggingFace hub.

    - `"digits"`: scikit-learn's 8x8 digits ([`load_digits`][]), always available.
    - `"mnist"`: the IDX files in `data_dir` or `data_dir/mnist` ([`load_mnist`][]), else the
        hub's `ylecun/mnist`.
    - `"cifar10"`: a `save_to_disk` folder `data_dir/cifar10-jpeg` or `data_dir/cifar10` (or
        `data_dir` itself), else the hub's `uoft-cs/cifar10`.
    - `"cifar100"`: likewise with `data_dir/cifar100` and `uoft-cs/cifar100` (fine labels).

    **Arguments:**

    - `name`: one of the names above.
    - `data_dir`: where local copies live; defaults to the `NOPROP_DATA_DIR` environment
        variable.

    **Raises:** `ValueError` for an unknown name; [`DatasetNotFoundError`][] listing every path
    and source tried when none has the data.
    """
    if name not in _LOADERS:
        raise ValueError(f"expected a dataset name in {sorted(_LOADERS)}, got {name!r}")
    return _LOADERS[name](_data_dir(data_dir))
