"""Errors that dataset loaders raise for problems the user can fix in the data folder.

The training and evaluation commands report these as one-line errors without a
traceback, so every message names the file or folder and the fix.
"""


class DatasetNotFoundError(FileNotFoundError):
    """Error for missing dataset files. Its message names the files to place and the folder."""


class DatasetFileError(ValueError):
    """Error for a dataset file or folder that exists but is damaged, inconsistent or laid out wrongly."""
