"""Parquet snapshots of one study's cache: a user-facing, crash-safe file contract.

Layout (``snapshot_dir/study_dir/``)::

    latest -> 20261129T074500Z              relative symlink, swapped atomically
    20261129T074500Z/                       one complete set per run, named by UTC run time
        manifest.json                       data version, rows, and every table's parts
        {collection}.parquet/part-NNNNN.parquet        the 11 collections, API names
        forms/{form_key}.parquet/part-NNNNN.parquet    typed per-form record tables
    .tmp-<name>/                            a set being written (only during a run or
                                            after a crash)

A ``{name}.parquet`` directory of parts reads as one table in pandas, pyarrow, DuckDB and
Polars. Collection tables hold the collection's typed fields in order, derived columns
(queries' ``isOpen``), then ``raw``, the API's JSON of the row; form tables hold the record
metadata columns and one typed column per variable of the form. Soft-deleted rows stay,
with ``deleted = true``. Timestamps are second-precision UTC instants (Parquet stores
them as ``timestamp[ms, tz=UTC]``).

Why it is built this way:

* ``latest`` only ever points at a directory that was complete before it was renamed
  into place, and the symlink itself is replaced with ``os.replace``: a crash at any
  moment leaves readers on the previous complete set. Leftover ``.tmp-*`` entries are
  removed by the next run (writers are serialised by the caller, the sync's FileLock).
* Sets are incremental (`writer`): parts the cache's change log does not touch are hard
  links to the previous set's files; parts cover id ranges cut by row counts (`parts`).
"""

from imednet_flows.cache.snapshots.parts import PART_ROWS
from imednet_flows.cache.snapshots.paths import (
    LATEST,
    LINK_TMP_PREFIX,
    MANIFEST,
    TMP_PREFIX,
    UnsafeSnapshotPath,
    complete_sets,
    latest_snapshot,
    read_manifest,
    safe_name,
    study_path,
)
from imednet_flows.cache.snapshots.writer import (
    FORMAT_VERSION,
    SnapshotResult,
    snapshot_is_current,
    write_snapshot,
)

__all__ = [
    "FORMAT_VERSION",
    "LATEST",
    "LINK_TMP_PREFIX",
    "MANIFEST",
    "PART_ROWS",
    "TMP_PREFIX",
    "SnapshotResult",
    "UnsafeSnapshotPath",
    "complete_sets",
    "latest_snapshot",
    "read_manifest",
    "safe_name",
    "snapshot_is_current",
    "study_path",
    "write_snapshot",
]
