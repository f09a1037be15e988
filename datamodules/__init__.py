"""HDF5 datasets, the shared AtomsDataModule, and dataset builders.

Imports are lazy so that ``gcd data ...`` does not pay for importing Lightning.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "AtomsDataModule": "datamodules.datamodule",
    "AtomsH5": "datamodules.h5format",
    "DatasetRecords": "datamodules.h5format",
    "validate_file": "datamodules.h5format",
    "write_dataset": "datamodules.h5format",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
