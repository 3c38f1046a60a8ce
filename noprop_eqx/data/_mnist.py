"""MNIST from the four standard IDX files on disk."""

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from ._dataset import ImageDataset
from ._errors import DataIntegrityError, DatasetNotFoundError

_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

# md5 of the uncompressed bytes of the official release.
_MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def _parse_idx(data: bytes, *, magic: int, source: str) -> np.ndarray:
    """Parse IDX bytes: a big-endian magic number, big-endian uint32 dims, then uint8 data."""
    if len(data) < 4:
        raise ValueError(f"{source}: truncated IDX file, expected >= 4 bytes, got {len(data)}")
    got_magic = int.from_bytes(data[:4], "big")
    if got_magic != magic:
        raise ValueError(
            f"{source}: bad IDX magic number, expected {magic:#010x}, got {got_magic:#010x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{source}: truncated IDX header, expected {header} bytes, got {len(data)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise ValueError(
            f"{source}: expected {expected} bytes for an IDX array of shape {dims}, got {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx(path: Path, *, magic: int, md5: str | None) -> np.ndarray:
    """Read a raw or gzipped IDX file, checking the md5 of its uncompressed bytes if given."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataIntegrityError(
            f"{path}: cannot read the file ({type(e).__name__}: {e}); it is truncated or not a "
            "gzip/IDX file: download it again"
        ) from None
    if md5 is not None:
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise DataIntegrityError(
                f"{path}: md5 of the uncompressed bytes does not match the official MNIST file, "
                f"expected {md5}, got {got}; download it again, or skip this check for a copy "
                "you trust (verify=False; `noprop-eqx train --no-verify-md5`)"
            )
    try:
        return _parse_idx(data, magic=magic, source=str(path))
    except ValueError as e:
        raise DataIntegrityError(str(e)) from None


def _find_files(directory: Path) -> tuple[dict[str, Path] | None, list[str]]:
    """Locate the four files (raw or .gz) in `directory`; return them and the paths tried."""
    found, tried = {}, []
    for stem in _MNIST_FILES:
        candidates = [directory / stem, directory / f"{stem}.gz"]
        tried.extend(str(c) for c in candidates)
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is not None:
            found[stem] = hit
    return (found if len(found) == len(_MNIST_FILES) else None), tried


def load_mnist(data_dir: str | os.PathLike | None = None, *, verify: bool = True) -> ImageDataset:
    """MNIST (60000 train / 10000 test, 28x28 grayscale) from the standard IDX files.

    The directory must hold `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each raw or gzipped (`.gz`). Both
    `data_dir` and `data_dir/mnist` are searched.

    **Arguments:**

    - `data_dir`: the directory; defaults to the `NOPROP_DATA_DIR` environment variable.
    - `verify`: check the md5 of each file's uncompressed bytes against the official release.

    **Returns:** an [`ImageDataset`][] named `"mnist"` with images of shape `(1, 28, 28)`.

    **Raises:** [`DatasetNotFoundError`][] listing every path tried if no complete set of files
    is found; `ValueError` on an md5 mismatch or a malformed file.
    """
    how = (
        "Pass data_dir=... (a directory holding the four MNIST IDX files, raw or .gz), set the "
        'NOPROP_DATA_DIR environment variable, or use load_hf_dataset("ylecun/mnist") when online.'
    )
    if data_dir is None:
        data_dir = os.environ.get("NOPROP_DATA_DIR")
        if not data_dir:
            raise DatasetNotFoundError(
                f"MNIST not found: no data_dir given and NOPROP_DATA_DIR is not set. {how}"
            )
    root = Path(data_dir).expanduser()
    tried = []
    for directory in (root, root / "mnist"):
        files, tried_here = _find_files(directory)
        tried.extend(tried_here)
        if files is not None:
            break
    else:
        listing = "\n  ".join(tried)
        raise DatasetNotFoundError(
            f"MNIST not found: no complete set of IDX files under {root}. "
            f"Tried:\n  {listing}\n{how}"
        )

    def read(stem: str, magic: int) -> np.ndarray:
        return _read_idx(files[stem], magic=magic, md5=_MNIST_FILES[stem] if verify else None)

    return ImageDataset.from_raw(
        read("train-images-idx3-ubyte", _IMAGES_MAGIC),
        read("train-labels-idx1-ubyte", _LABELS_MAGIC),
        read("t10k-images-idx3-ubyte", _IMAGES_MAGIC),
        read("t10k-labels-idx1-ubyte", _LABELS_MAGIC),
        num_classes=10,
        name="mnist",
        class_names=tuple(str(i) for i in range(10)),
    )
