"""Any HuggingFace image-classification dataset, via the `datasets` library."""

import glob
import io
import os
from pathlib import Path

import numpy as np

from ._dataset import ImageDataset
from ._errors import DatasetNotFoundError

_IMAGE_NAMES = ("image", "img")
_LABEL_NAMES = ("label", "labels", "fine_label")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _glob_root(pattern: Path) -> Path:
    """The folder above the first component of `pattern` that holds a wildcard."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if _is_glob(part))
    return Path(*parts[:first]) if first else Path(".")


def _parquet_files(root: Path, files: list[Path], splits: tuple[str, str]) -> dict[str, list[str]]:
    """Assign parquet files to splits by the hub's layouts.

    A file belongs to split `s` if its name starts with `s-` or `s.` (`data/train-0000.parquet`,
    `mnist/train-00000-of-00001.parquet`) or a folder below `root` is named `s`
    (`plain_text/train/0000.parquet`). The other folders name the config; exactly one config may
    hold train files.
    """
    configs: dict[tuple[str, ...], dict[str, list[str]]] = {}
    for file in files:
        parts = file.relative_to(root).parts
        for split in splits:
            if parts[-1].startswith((f"{split}-", f"{split}.")):
                config = parts[:-1]
            elif split in parts[:-1]:
                config = tuple(p for p in parts[:-1] if p != split)
            else:
                continue
            configs.setdefault(config, {}).setdefault(split, []).append(str(file))
            break
    with_train = [c for c, found in configs.items() if splits[0] in found]
    if not with_train:
        raise DatasetNotFoundError(
            f"no parquet files for split {splits[0]!r} under {root}: expected names like "
            f"'{splits[0]}-00000-of-00001.parquet', got {[str(f) for f in files]}"
        )
    if len(with_train) > 1:
        options = ", ".join(str(root.joinpath(*c)) for c in with_train)
        raise ValueError(
            f"expected parquet files of one dataset config under {root}, got several: {options}; "
            "pass one of these folders instead"
        )
    return {split: sorted(paths) for split, paths in configs[with_train[0]].items()}


def _load_local_or_hub(name_or_path: str, splits: tuple[str, str]):
    """Return a `DatasetDict` from a save_to_disk folder, parquet files, or the hub."""
    import datasets

    path = Path(name_or_path).expanduser()
    if _is_glob(name_or_path):
        root = _glob_root(path)
        files = [Path(f) for f in sorted(glob.glob(str(path), recursive=True))]
        files = [f for f in files if f.suffix == ".parquet" and f.is_file()]
        if not files:
            raise DatasetNotFoundError(f"no parquet files match the pattern {name_or_path!r}")
        data_files = _parquet_files(root, files, splits)
    elif path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        files = sorted(f for f in path.rglob("*.parquet") if f.is_file())
        if not files:
            raise DatasetNotFoundError(
                f"local directory {path} holds neither a dataset_dict.json (written by "
                "DatasetDict.save_to_disk) nor parquet files in the hub's layout"
            )
        data_files = _parquet_files(path, files, splits)
    elif path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists():
        raise DatasetNotFoundError(f"{path} is not a directory (expected a dataset folder)")
    else:
        try:
            return datasets.load_dataset(name_or_path)
        except Exception as e:
            raise DatasetNotFoundError(
                f"could not load {name_or_path!r}: it is not a local directory or parquet glob, "
                f"and loading it from the HuggingFace hub failed ({type(e).__name__}: {e}). "
                "The hub needs network access (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); "
                "offline, pass a folder written by DatasetDict.save_to_disk or a folder of "
                "parquet files."
            ) from e
    return datasets.load_dataset("parquet", data_files=data_files)


def _pick_column(features, given: str | None, kind, names: tuple[str, ...], what: str) -> str:
    if given is not None:
        if given not in features:
            raise ValueError(
                f"expected {what} column {given!r} in the dataset, got columns {list(features)}"
            )
        return given
    for column, feature in features.items():
        if isinstance(feature, kind):
            return column
    for column in names:
        if column in features:
            return column
    raise ValueError(
        f"could not detect the {what} column: expected a {kind.__name__} feature or a column "
        f"named one of {list(names)}, got columns {list(features)}; pass {what}_column=..."
    )


def _open_images(column, source: str) -> list:
    """PIL images (opened lazily) from an arrow column of `{bytes, path}` structs or bytes."""
    import pyarrow as pa
    from PIL import Image

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(column.type):
        blobs = column.field("bytes").to_pylist()
        paths = column.field("path").to_pylist()
    elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        blobs, paths = column.to_pylist(), [None] * len(column)
    else:
        raise TypeError(f"{source}: expected an image column of encoded images, got {column.type}")
    images = []
    for blob, path in zip(blobs, paths, strict=True):
        if blob is None and path is None:
            raise ValueError(f"{source}: expected every image to have bytes or a path, got neither")
        images.append(Image.open(io.BytesIO(blob) if blob is not None else path))
    return images


def _to_uint8(images: list, mode: str, source: str) -> np.ndarray:
    size = images[0].size
    for image in images:
        if image.size != size:
            raise ValueError(
                f"{source}: expected all images of size {size} (width, height), got {image.size}"
            )
    converted = (image if image.mode == mode else image.convert(mode) for image in images)
    return np.stack([np.asarray(image, dtype=np.uint8) for image in converted])


def load_hf_dataset(
    name_or_path: str | os.PathLike,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    name: str | None = None,
) -> ImageDataset:
    """An image-classification dataset through HuggingFace `datasets`.

    `name_or_path` may be:

    - a folder written by `DatasetDict.save_to_disk` (holding `dataset_dict.json`), loaded with
        `datasets.load_from_disk`, fully offline;
    - a folder, or glob, of parquet files in the hub's layout (`data/train-*.parquet`,
        `mnist/train-*.parquet`, `train-*.parquet`, ...), loaded with the parquet builder;
    - a hub name such as `"ylecun/mnist"`, loaded with `datasets.load_dataset` (needs network).

    Images are decoded to uint8 (grayscale to one channel, anything else to RGB) and normalised
    with per-channel train statistics.

    **Arguments:**

    - `name_or_path`: as above.
    - `image_column`: defaults to the first `Image` feature, else a column `image`/`img`.
    - `label_column`: defaults to the first `ClassLabel` feature, else a column
        `label`/`labels`/`fine_label`.
    - `train_split`, `test_split`: the split names.
    - `name`: the dataset's name; defaults to the last component of `name_or_path`.

    **Returns:** an [`ImageDataset`][]. `num_classes` and `class_names` come from the label's
    `ClassLabel` feature when it has one, else `num_classes` is the largest label plus one.

    **Raises:** [`DatasetNotFoundError`][] if nothing can be found or the hub is unreachable.
    """
    import datasets

    name_or_path = os.fspath(name_or_path)
    splits = (train_split, test_split)
    dataset_dict = _load_local_or_hub(name_or_path, splits)
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise ValueError(
            f"{name_or_path}: expected a DatasetDict with splits {list(splits)}, "
            f"got {type(dataset_dict).__name__}"
        )
    missing = [s for s in splits if s not in dataset_dict]
    if missing:
        raise ValueError(
            f"{name_or_path}: expected splits {list(splits)}, got {list(dataset_dict)}; "
            "pass train_split=... / test_split=..."
        )
    features = dataset_dict[train_split].features
    image_column = _pick_column(features, image_column, datasets.Image, _IMAGE_NAMES, "image")
    label_column = _pick_column(features, label_column, datasets.ClassLabel, _LABEL_NAMES, "label")

    images, labels = {}, {}
    for split in splits:
        table = dataset_dict[split].with_format("arrow")[:]
        source = f"{name_or_path}[{split}].{image_column}"
        images[split] = _open_images(table.column(image_column), source)
        labels[split] = table.column(label_column).to_numpy().astype(np.int64)
        if not images[split]:
            raise ValueError(f"{source}: expected at least one example, got none")
    grey = all(im.mode in ("L", "1") for split in splits for im in images[split])
    mode = "L" if grey else "RGB"
    x = {split: _to_uint8(images[split], mode, f"{name_or_path}[{split}]") for split in splits}

    label_feature = features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        num_classes, class_names = label_feature.num_classes, tuple(label_feature.names)
    else:
        num_classes = int(max(labels[s].max() for s in splits)) + 1
        class_names = None
    if name is None:
        path = Path(name_or_path)
        name = (_glob_root(path) if _is_glob(name_or_path) else path).resolve().name
        name = name or name_or_path
    return ImageDataset.from_raw(
        x[train_split],
        labels[train_split],
        x[test_split],
        labels[test_split],
        num_classes=num_classes,
        name=name,
        class_names=class_names,
    )
