"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class GcdError(Exception):
    """An error caused by the user's input (a file, an option, a config), not by a bug."""


class DatasetFormatError(GcdError):
    """An HDF5 dataset file that is not a valid lightning_gcd file; names the file and the field."""

    def __init__(self, path: str | Path, field: str, problem: str) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + problem)


class EncodingError(GcdError):
    """A structure the voxel encoding cannot represent (grid too coarse, unsupported cell)."""
