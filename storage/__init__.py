"""The run directory: layout, Parquet I/O, manifests, fingerprints, atomic commits.

This package is the only code that knows paths and formats; stages ask it where
to read and write.
"""

from .commit import Aside, commit
from .fingerprint import code_version, file_sha256, hash_json, stable_hashes, stable_uniform, tree_sha256
from .layout import Location, RunDir, partition, partition_value, relative, remove_checkpoints, resolve, split_path
from .manifest import (
    MANIFEST,
    FileEntry,
    Manifest,
    ManifestError,
    committed,
    invalidate,
    load_output,
    partitions,
    problems,
    read_manifest,
)
from .parquet import FileWriter, PartWriter, read_batches, read_table, write_table
from .record import read_record, record_text, write_record

__all__ = [
    "Aside",
    "commit",
    "code_version",
    "file_sha256",
    "hash_json",
    "stable_hashes",
    "stable_uniform",
    "tree_sha256",
    "Location",
    "remove_checkpoints",
    "partition",
    "partition_value",
    "relative",
    "resolve",
    "split_path",
    "RunDir",
    "MANIFEST",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "committed",
    "invalidate",
    "load_output",
    "partitions",
    "problems",
    "read_manifest",
    "FileWriter",
    "PartWriter",
    "read_batches",
    "read_table",
    "write_table",
    "read_record",
    "record_text",
    "write_record",
]
