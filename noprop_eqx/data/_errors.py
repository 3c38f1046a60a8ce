"""The error raised when a dataset cannot be found."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset could not be found at any of the places tried.

    The message lists every path or source that was tried and how to supply the data. The
    loaders raise this instead of ever falling back to random or synthetic data.
    """
