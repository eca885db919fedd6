"""The dataset registry: named, versioned records of where datasets live (``ml dataset``), that
a job's spec names and the server resolves at submit (``FETCHML_DATASET_<NAME>``, the run
manifest)."""

from ._registry import DB_NAME, DatasetRegistry, Datasets, check_registration, uri_problem

__all__ = ["DB_NAME", "DatasetRegistry", "Datasets", "check_registration", "uri_problem"]
