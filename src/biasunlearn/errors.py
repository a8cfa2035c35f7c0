"""Errors a user can cause. Each message names the file, row, setting or module at fault."""


class BiasUnlearnError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class DataError(BiasUnlearnError):
    """A data file is missing or malformed."""

    def __init__(self, path, message, row=None, item=None):
        """row: a 1-based line of a text file (CSV, JSONL); item: a 0-based index into a JSON list, said 1-based."""
        where = f"{path}" + (f", row {row}" if row is not None else "") \
            + (f", item {item + 1} of its list" if item is not None else "")
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.item = str(path), row, item


class ModelLoadError(BiasUnlearnError):
    """A model or adapter could not be loaded."""


class ConfigError(BiasUnlearnError):
    """A setting has a bad value."""
