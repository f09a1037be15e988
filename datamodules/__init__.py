"""HDF5 datasets, the shared AtomsDataModule, and dataset builders."""

from datamodules.datamodule import AtomsDataModule
from datamodules.h5format import AtomsH5, DatasetRecords, validate_file, write_dataset

__all__ = ["AtomsDataModule", "AtomsH5", "DatasetRecords", "validate_file", "write_dataset"]
