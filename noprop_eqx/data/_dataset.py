"""`ImageDataset`: normalised train/test image arrays plus their metadata."""

import dataclasses
from dataclasses import dataclass

import numpy as np


def _as_nchw(images: np.ndarray) -> np.ndarray:
    """Raw `(N, H, W)` or `(N, H, W, C)` pixels -> contiguous `(N, C, H, W)`, same dtype."""
    images = np.asarray(images)
    if images.ndim == 3:
        return np.ascontiguousarray(images[:, None])
    if images.ndim == 4:
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise ValueError(f"expected raw images of shape (N, H, W) or (N, H, W, C), got {images.shape}")


def _check_stats(mean, std, channels: int) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"expected mean and std with {channels} entries (one per channel), "
            f"got {mean.shape[0]} and {std.shape[0]}"
        )
    if np.any(std <= 0):
        raise ValueError(f"expected positive std per channel, got {tuple(std.tolist())}")
    return mean, std


def _normalise_nchw(raw: np.ndarray, mean, std, scale: float) -> np.ndarray:
    mean, std = _check_stats(mean, std, raw.shape[1])
    out = np.empty(raw.shape, dtype=np.float32)
    for c in range(raw.shape[1]):
        # (p / scale - m) / s, as one multiply and one subtract per channel.
        np.multiply(raw[:, c], np.float32(1.0 / (scale * std[c])), out=out[:, c], casting="unsafe")
        out[:, c] -= np.float32(mean[c] / std[c])
    return out


def normalise(
    images: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    scale: float = 255.0,
) -> np.ndarray:
    """Turn raw pixels into normalised float32 images in channel-first layout.

    `x = (pixels / scale - mean) / std`, per channel.

    **Arguments:**

    - `images`: raw pixels, `(N, H, W)` (one channel) or `(N, H, W, C)`.
    - `mean`, `std`: per-channel statistics on the `pixels / scale` (0..1) scale.
    - `scale`: value of a full-intensity pixel (255 for uint8 images).

    **Returns:** a float32 array of shape `(N, C, H, W)`.
    """
    return _normalise_nchw(_as_nchw(images), mean, std, scale)


def channel_stats(
    images: np.ndarray, *, scale: float = 255.0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of raw `(N, H, W)` or `(N, H, W, C)` pixels, divided by `scale`."""
    return _stats_nchw(_as_nchw(images), scale)


def _stats_nchw(raw: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = [], []
    for c in range(raw.shape[1]):
        if raw.dtype == np.uint8:  # exact and fast, from a 256-bin histogram
            counts = np.bincount(raw[:, c].ravel(), minlength=256)
            values = np.arange(256) / scale
            m = counts @ values / counts.sum()
            var = counts @ np.square(values - m) / counts.sum()
        else:
            xc = raw[:, c].astype(np.float64) / scale
            m, var = xc.mean(), xc.var()
        mean.append(float(m))
        std.append(float(np.sqrt(var)))
    return tuple(mean), tuple(std)


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """An image-classification dataset held as normalised numpy arrays.

    Images are float32 `(N, C, H, W)`, normalised once with per-channel statistics of the train
    split: `x = (pixels / 255 - mean) / std`. Labels are int32 `(N,)` in `[0, num_classes)`.

    **Fields:**

    - `x_train`, `y_train`, `x_test`, `y_test`: the two splits.
    - `num_classes`: number of classes.
    - `name`: a short name, e.g. `"mnist"`.
    - `mean`, `std`: per-channel train statistics on the 0..1 scale (used for both splits).
    - `class_names`: optional human-readable class names, one per class.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"expected num_classes a positive int, got {self.num_classes!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
                raise ValueError(
                    f"expected x_{split} a float32 numpy array of shape (N, C, H, W), got "
                    f"{type(x).__name__} {getattr(x, 'dtype', None)} {getattr(x, 'shape', None)}"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
                raise ValueError(
                    f"expected y_{split} an int32 numpy array of shape (N,), got "
                    f"{type(y).__name__} {getattr(y, 'dtype', None)} {getattr(y, 'shape', None)}"
                )
            if len(x) != len(y):
                raise ValueError(
                    f"expected as many {split} labels as images ({len(x)}), got {len(y)}"
                )
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"expected {split} labels in [0, {self.num_classes}), "
                    f"got values in [{y.min()}, {y.max()}]"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"expected test images of shape {self.x_train.shape[1:]} like the train "
                f"images, got {self.x_test.shape[1:]}"
            )
        channels = self.x_train.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"expected mean and std with {channels} entries (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"expected {self.num_classes} class names, got {len(self.class_names)}"
            )

    @classmethod
    def from_raw(
        cls,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        *,
        num_classes: int,
        name: str,
        class_names: tuple[str, ...] | None = None,
        scale: float = 255.0,
    ) -> "ImageDataset":
        """Build a dataset from raw pixels, normalising both splits with train statistics.

        **Arguments:**

        - `x_train`, `x_test`: raw pixels, `(N, H, W)` or `(N, H, W, C)`, full intensity
            `scale` (255 for uint8).
        - `y_train`, `y_test`: integer labels of shape `(N,)`.
        - `num_classes`, `name`, `class_names`: as for the fields.
        - `scale`: value of a full-intensity pixel.
        """
        raw_train = _as_nchw(x_train)
        mean, std = _stats_nchw(raw_train, scale)
        return cls(
            x_train=_normalise_nchw(raw_train, mean, std, scale),
            y_train=np.asarray(y_train).astype(np.int32),
            x_test=normalise(x_test, mean, std, scale=scale),
            y_test=np.asarray(y_test).astype(np.int32),
            num_classes=num_classes,
            name=name,
            mean=mean,
            std=std,
            class_names=None if class_names is None else tuple(class_names),
        )

    @property
    def background(self) -> np.ndarray:
        """The normalised value of a black (zero) pixel, per channel: `-mean / std`. The fill
        for translated images (`random_shift`)."""
        return (-np.asarray(self.mean) / np.asarray(self.std)).astype(np.float32)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape `(C, H, W)` of one image."""
        return self.x_train.shape[1:]

    def subset(
        self,
        limit_train: int | None = None,
        limit_test: int | None = None,
        *,
        seed: int | None = 0,
    ):
        """A new dataset keeping `limit_train` train and `limit_test` test examples.

        `None` keeps a whole split. With an integer `seed` (default 0) each split is a seeded
        random, stratified sample: every class of the split keeps at least one example and the
        rest follow the classes' shares (largest remainder), so a dataset stored sorted by class
        (as some copies of CIFAR-10 are) still gives a subset with every class. The examples
        keep their original order. `seed=None` keeps the first rows instead (the behaviour of
        runs made before seeded subsets existed). Statistics and metadata are kept unchanged.

        **Raises:** `ValueError` for a limit that is not a positive int, or (with a seed) for a
        limit smaller than the number of classes in that split.
        """
        for label, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
            ):
                raise ValueError(f"expected {label} a positive int or None, got {limit!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"expected seed an int or None, got {seed!r}")
        train = _subset_rows(self.y_train, limit_train, seed, 0, "limit_train")
        test = _subset_rows(self.y_test, limit_test, seed, 1, "limit_test")
        return dataclasses.replace(
            self,
            x_train=self.x_train[train],
            y_train=self.y_train[train],
            x_test=self.x_test[test],
            y_test=self.y_test[test],
        )

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.y_train)}, "
            f"test={len(self.y_test)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )


def _subset_rows(y: np.ndarray, limit: int | None, seed: int | None, split: int, what: str):
    """Row indices of a `limit`-example subset of labels `y` (see `ImageDataset.subset`)."""
    if limit is None or limit >= len(y):
        return slice(None)
    if seed is None:
        return slice(None, limit)
    classes, counts = np.unique(y, return_counts=True)
    if limit < len(classes):
        raise ValueError(
            f"expected {what} of at least {len(classes)} (one example of each class in the "
            f"split), got {limit}: a subset with fewer classes than the dataset would train or "
            f"test on part of the problem only"
        )
    # One example per class, then the rest by the classes' shares, largest remainder first.
    share = (limit - len(classes)) * counts / len(y)
    take = 1 + np.floor(share).astype(np.int64)
    rest = limit - int(take.sum())
    take[np.argsort(-(share - np.floor(share)), kind="stable")[:rest]] += 1
    take = np.minimum(take, counts)
    rng = np.random.default_rng([seed, split])
    rows = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(rows))
