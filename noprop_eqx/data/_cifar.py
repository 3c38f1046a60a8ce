"""CIFAR-10 and CIFAR-100 from the official python releases: the tarball or its extracted folder.

The releases (https://www.cs.toronto.edu/~kriz/cifar.html) hold Python pickles written with bytes
keys: `b"data"` is an `(N, 3072)` uint8 array, each row the red plane then the green then the
blue, each plane 32x32 row-major; labels are lists of ints under `b"labels"` (CIFAR-10) or
`b"fine_labels"` / `b"coarse_labels"` (CIFAR-100); the meta file holds the class names.
"""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._dataset import ImageDataset
from ._errors import DataIntegrityError, DatasetNotFoundError


@dataclass(frozen=True)
class _Release:
    """One official CIFAR python release: its tarball, its folder and the files in it."""

    name: str
    title: str
    tarball: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.tarball}"


_CIFAR10 = _Release(
    name="cifar10",
    title="CIFAR-10",
    tarball="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch",
    meta="batches.meta",
)
_CIFAR100 = _Release(
    name="cifar100",
    title="CIFAR-100",
    tarball="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train=("train",),
    test="test",
    meta="meta",
)

# md5 of the official files, keyed by the tarball's name or by "<extracted folder>/<file>". The
# CIFAR page publishes the tarballs' md5s; the extracted files' md5s are those torchvision
# checks (`torchvision.datasets.CIFAR10` / `CIFAR100`), the de facto reference.
_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}


@dataclass(frozen=True)
class _Labels:
    """Where one label column lives: its key in the batches, its names' key in the meta file."""

    key: bytes
    names_key: bytes
    num_classes: int


_LABELS = {
    ("cifar10", "fine"): _Labels(b"labels", b"label_names", 10),
    ("cifar100", "fine"): _Labels(b"fine_labels", b"fine_label_names", 100),
    ("cifar100", "coarse"): _Labels(b"coarse_labels", b"coarse_label_names", 20),
}

# The only globals a CIFAR pickle needs: numpy arrays (written by numpy 1 or 2) and, for pickles
# written by Python 3 with protocol 2, bytes. Anything else is refused rather than executed.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load the global {module}.{name}, which a CIFAR pickle never holds"
            )
        return super().find_class(module, name)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5(path: Path, key: str) -> None:
    expected = _MD5[key]
    got = _md5(path)
    if got != expected:
        raise DataIntegrityError(
            f"{path}: md5 mismatch, expected {expected} (the official {key}), got {got}. The "
            "file is corrupt, truncated or not the official release: download it again, or "
            "pass verify_md5=False to skip this check."
        )


def _unpickle(data: bytes, source: str) -> dict:
    try:
        # Any failure here means the bytes are not a readable pickle: report it as such.
        content = _Unpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise DataIntegrityError(
            f"{source}: not a readable CIFAR pickle ({type(e).__name__}: {e}); the file is "
            "truncated, corrupt or not from the CIFAR release: download the official release again"
        ) from e
    if not isinstance(content, dict):
        raise DataIntegrityError(
            f"{source}: expected a pickled dict with bytes keys, got {type(content).__name__}"
        )
    return content


def _read_tarball(path: Path, release: _Release) -> dict[str, bytes]:
    """The bytes of each member of `release`, read in one sequential pass over the archive."""
    wanted = {f"{release.folder}/{member}": member for member in release.members}
    found = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                member = wanted.get(info.name.removeprefix("./"))
                if member is not None and info.isfile():
                    found[member] = tar.extractfile(info).read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataIntegrityError(
            f"{path}: truncated or corrupt tarball ({type(e).__name__}: {e}); expected the "
            f"official {release.tarball}: download it again from {release.url}"
        ) from e
    missing = [name for name, member in wanted.items() if member not in found]
    if missing:
        raise DataIntegrityError(
            f"{path}: expected the members {list(wanted)}, missing {missing}; the archive is "
            f"truncated or not the official {release.tarball}: download it again from "
            f"{release.url}"
        )
    return found


def _read_folder(path: Path, release: _Release, verify_md5: bool) -> dict[str, bytes]:
    missing = [member for member in release.members if not (path / member).is_file()]
    if missing:
        raise DataIntegrityError(
            f"{path}: expected the extracted {release.folder}/ folder holding "
            f"{list(release.members)}, missing {missing}; extract {release.tarball} again"
        )
    if verify_md5:
        for member in release.members:
            _check_md5(path / member, f"{release.folder}/{member}")
    return {member: (path / member).read_bytes() for member in release.members}


def _other_release_hint(release: _Release, batch: dict) -> str:
    if release is _CIFAR10 and b"fine_labels" in batch:
        return "; this looks like CIFAR-100 data: load it as cifar100"
    if release is _CIFAR100 and b"labels" in batch:
        return "; this looks like CIFAR-10 data: load it as cifar10"
    return ""


def _images_and_labels(
    batch: dict, source: str, release: _Release, labels: _Labels
) -> tuple[np.ndarray, np.ndarray]:
    """Raw `(N, 32, 32, 3)` uint8 images and `(N,)` int64 labels from one unpickled batch."""
    data = batch.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        raise DataIntegrityError(
            f"{source}: expected b'data' a uint8 array of shape (N, 3072), got {got.strip()}"
        )
    if data.shape[1] != 3 * 32 * 32 or len(data) == 0:
        raise DataIntegrityError(
            f"{source}: expected b'data' of shape (N, 3072) with N >= 1 (3 planes of 32x32 "
            f"pixels per row), got {data.shape}"
        )
    if labels.key not in batch:
        raise DataIntegrityError(
            f"{source}: expected labels under {labels.key!r}, got keys {sorted(batch)}"
            + _other_release_hint(release, batch)
        )
    y = np.asarray(batch[labels.key])
    if y.shape != (len(data),) or not np.issubdtype(y.dtype, np.integer):
        raise DataIntegrityError(
            f"{source}: expected {len(data)} integer labels under {labels.key!r}, got "
            f"{y.dtype} of shape {y.shape}"
        )
    if y.min() < 0 or y.max() >= labels.num_classes:
        raise DataIntegrityError(
            f"{source}: expected {release.title} labels in [0, {labels.num_classes}), got values "
            f"in [{y.min()}, {y.max()}]; the file belongs to another dataset or is corrupt"
            + _other_release_hint(release, batch)
        )
    # Row = R plane, G plane, B plane, each row-major 32x32: (N, C, H, W), then channel-last
    # for `ImageDataset.from_raw` (a view; from_raw brings it back to channel-first).
    images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
    return images, y.astype(np.int64)


def _class_names(meta: dict, source: str, labels: _Labels) -> tuple[str, ...]:
    names = meta.get(labels.names_key)
    if not isinstance(names, list | tuple) or len(names) != labels.num_classes:
        got = f"{len(names)} names" if isinstance(names, list | tuple) else repr(type(names))
        raise DataIntegrityError(
            f"{source}: expected {labels.num_classes} class names under {labels.names_key!r}, "
            f"got {got}; the file belongs to another dataset or is corrupt"
        )
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _load_official(
    release: _Release, kind: str, path: Path, *, labels: str, verify_md5: bool
) -> ImageDataset:
    """Load `release` from its tarball (`kind="tarball"`) or extracted folder (`"folder"`)."""
    label_spec = _LABELS[release.name, labels]
    if kind == "tarball":
        if verify_md5:
            _check_md5(path, release.tarball)
        blobs = _read_tarball(path, release)
        source = lambda member: f"{path}:{release.folder}/{member}"
    else:
        blobs = _read_folder(path, release, verify_md5)
        source = lambda member: str(path / member)
    split = {}
    for name, members in (("train", release.train), ("test", (release.test,))):
        parts = [
            _images_and_labels(_unpickle(blobs[m], source(m)), source(m), release, label_spec)
            for m in members
        ]
        split[name] = [np.concatenate(column) for column in zip(*parts, strict=True)]
    meta = _unpickle(blobs[release.meta], source(release.meta))
    class_names = _class_names(meta, source(release.meta), label_spec)
    (x_train, y_train), (x_test, y_test) = split["train"], split["test"]
    return ImageDataset.from_raw(
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=label_spec.num_classes,
        name=release.name if labels == "fine" else f"{release.name}-{labels}",
        class_names=class_names,
    )


def _how_to_provide(release: _Release, where: str) -> list[str]:
    """The two official forms, as lines saying what to put where."""
    return [
        f"the official tarball: put {release.tarball} (from {release.url}) at "
        f"{os.path.join(where, release.tarball)}",
        f"its extracted folder: put {release.folder}/ (holding {', '.join(release.members)}) "
        f"at {os.path.join(where, release.folder)}",
    ]


def _locate(release: _Release, path: str | os.PathLike | None) -> tuple[str, Path]:
    """Find the tarball or extracted folder: `path` itself, or inside the folder `path`."""
    if path is None:
        path = os.environ.get("NOPROP_DATA_DIR") or None
    if path is None:
        lines = "\n- ".join(_how_to_provide(release, "<data_dir>"))
        raise DatasetNotFoundError(
            f"{release.title} not found: no path given and NOPROP_DATA_DIR is not set. Pass the "
            f"path of, or of the folder holding, one of:\n- {lines}"
        )
    root = Path(path).expanduser()
    if root.is_file():
        return "tarball", root
    if root.is_dir() and (
        root.name == release.folder or any((root / m).is_file() for m in release.members)
    ):
        return "folder", root
    tarball, folder = root / release.tarball, root / release.folder
    if tarball.is_file():
        return "tarball", tarball
    if folder.is_dir():
        return "folder", folder
    state = "is a folder" if root.is_dir() else "does not exist"
    lines = "\n- ".join(_how_to_provide(release, str(root)))
    raise DatasetNotFoundError(
        f"{release.title} not found: {root} {state}, and holds neither {tarball} nor {folder}/. "
        f"Tried:\n  {root}\n  {tarball}\n  {folder}\nProvide one of:\n- {lines}"
    )


def load_cifar10(path: str | os.PathLike | None = None, *, verify_md5: bool = True) -> ImageDataset:
    """CIFAR-10 (50000 train / 10000 test, 32x32 RGB, 10 classes) from the official python
    release, never downloaded.

    `path` may be the tarball `cifar-10-python.tar.gz` (read directly, nothing is extracted to
    disk), its extracted folder `cifar-10-batches-py/` (`data_batch_1` to `data_batch_5`,
    `test_batch`, `batches.meta`), or a folder holding either (the tarball is tried first).

    **Arguments:**

    - `path`: as above; defaults to the `NOPROP_DATA_DIR` environment variable.
    - `verify_md5`: check the md5 of the tarball before reading it, or of each extracted file.
        The CIFAR page publishes md5s for the tarballs only; the extracted files are checked
        against the md5s torchvision publishes. Shapes and label ranges are always checked.

    **Returns:** an [`ImageDataset`][] named `"cifar10"` with images of shape `(3, 32, 32)`,
    normalised with per-channel train statistics exactly as [`load_hf_dataset`][] does, and
    the class names of `batches.meta`.

    **Raises:** [`DatasetNotFoundError`][] naming the paths tried if neither form is found;
    [`DataIntegrityError`][] (a `ValueError`) for an md5 mismatch, a truncated or corrupt
    archive, a missing member, data of the wrong shape, or labels outside `[0, 10)`.
    """
    kind, found = _locate(_CIFAR10, path)
    return _load_official(_CIFAR10, kind, found, labels="fine", verify_md5=verify_md5)


def load_cifar100(
    path: str | os.PathLike | None = None, *, labels: str = "fine", verify_md5: bool = True
) -> ImageDataset:
    """CIFAR-100 (50000 train / 10000 test, 32x32 RGB) from the official python release, never
    downloaded.

    `path` may be the tarball `cifar-100-python.tar.gz` (read directly, nothing is extracted to
    disk), its extracted folder `cifar-100-python/` (`train`, `test`, `meta`), or a folder
    holding either (the tarball is tried first).

    **Arguments:**

    - `path`: as above; defaults to the `NOPROP_DATA_DIR` environment variable.
    - `labels`: `"fine"` for the 100 classes, `"coarse"` for the 20 superclasses.
    - `verify_md5`: check the md5 of the tarball before reading it, or of each extracted file,
        against the official release. Shapes and label ranges are always checked.

    **Returns:** an [`ImageDataset`][] named `"cifar100"` (or `"cifar100-coarse"`) with images
    of shape `(3, 32, 32)`, normalised with per-channel train statistics exactly as
    [`load_hf_dataset`][] does, and the class names of `meta`.

    **Raises:** `ValueError` for an unknown `labels`; [`DatasetNotFoundError`][] naming the paths
    tried if neither form is found; [`DataIntegrityError`][] (a `ValueError`) for an md5
    mismatch, a truncated or corrupt archive, a missing member, data of the wrong shape, or
    labels outside the classes.
    """
    if labels not in ("fine", "coarse"):
        raise ValueError(f"expected labels 'fine' or 'coarse', got {labels!r}")
    kind, found = _locate(_CIFAR100, path)
    return _load_official(_CIFAR100, kind, found, labels=labels, verify_md5=verify_md5)
