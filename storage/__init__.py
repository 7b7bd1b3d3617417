"""The run directory: layout, Parquet I/O, manifests, fingerprints, atomic commits.

This package is the only code that knows paths and formats; stages ask it where
to read and write.
"""

from .commit import Aside, commit
from .fingerprint import code_version, file_sha256, hash_json, stable_hashes, stable_uniform, tree_sha256
from .layout import STAGES, Location, RunDir
from .manifest import MANIFEST, FileEntry, Manifest, ManifestError, committed, load_output, partitions, problems, read_manifest
from .parquet import PartWriter, read_batches, read_table, write_table

__all__ = [
    "Aside", "commit", "code_version", "file_sha256", "hash_json", "stable_hashes", "stable_uniform", "tree_sha256", "STAGES", "Location",
    "RunDir", "MANIFEST", "FileEntry", "Manifest", "ManifestError", "committed", "load_output", "partitions", "problems",
    "read_manifest", "PartWriter", "read_batches", "read_table", "write_table",
]
