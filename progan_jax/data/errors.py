"""What a data set that cannot be used raises: shared by its sources and its cache build."""


class DataSetMissingError(RuntimeError):
    """The configured data set is not where it should be; the message says how to place it."""
