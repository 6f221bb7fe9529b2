"""Table formats and the storage operations on them: Delta Lake, Iceberg, staging, merges, quarantine."""
