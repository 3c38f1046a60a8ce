"""The errors raised when a dataset cannot be found, or is found but is not what it should be."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset could not be found at any of the places tried.

    The message lists every path or source that was tried and how to supply the data. The
    loaders raise this instead of ever falling back to random or synthetic data.
    """


class DataIntegrityError(ValueError):
    """A dataset was found but its files are not what they should be.

    Raised for an md5 checksum that does not match the official release, a truncated or
    corrupt archive, a member missing from an archive or folder, or content of the wrong
    shape or with labels outside the expected classes. The message names the file, what was
    expected and what was got. Unlike [`DatasetNotFoundError`][], this is never a reason to
    try the next place: broken data is an error, not a fallback.
    """
