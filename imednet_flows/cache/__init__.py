"""The local cache: one SQLite file in WAL mode for every study, Parquet snapshots beside it.
No Prefect imports: the sync flow wraps these functions; readers use them directly."""
