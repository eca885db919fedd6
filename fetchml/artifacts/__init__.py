"""Artifacts: what a run leaves — its outputs, listed, hashed and served without ever leaving
the output folder, and its ``run_manifest.json``."""

from ._outputs import MANIFEST_NAME, OutputFile, list_outputs, tar_outputs
from ._paths import OutsideError, open_inside
from ._results import UPLOADER, check_run_token, receive_results, run_token
from ._run_manifest import (
    Gpu,
    RunManifest,
    SnapshotRef,
    finished_manifest,
    read_run_manifest,
    started_manifest,
    write_run_manifest,
)
from ._validate import Validation, validate_run

__all__ = [
    "MANIFEST_NAME",
    "UPLOADER",
    "Gpu",
    "OutputFile",
    "OutsideError",
    "RunManifest",
    "SnapshotRef",
    "Validation",
    "check_run_token",
    "finished_manifest",
    "list_outputs",
    "open_inside",
    "read_run_manifest",
    "receive_results",
    "run_token",
    "started_manifest",
    "tar_outputs",
    "validate_run",
    "write_run_manifest",
]
