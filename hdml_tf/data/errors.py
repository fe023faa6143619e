"""Errors that dataset loaders raise for problems the user can fix in the data folder.

The training and evaluation commands report these as one-line errors without a
traceback, so every message names the file or folder and the fix.
"""


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing; the message says what to place where."""


class DatasetFileError(ValueError):
    """Raised when a dataset file or folder exists but is damaged, inconsistent or laid out wrongly."""
