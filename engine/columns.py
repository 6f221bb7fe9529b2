"""Names of the columns the engine adds to or reads from every table."""

SOURCE_FILE = "_source_file"
"""File name (no directory) of the landing file a bronze row came from."""

INGESTED_AT = "_ingested_at"
"""UTC timestamp (microseconds) at which the run that ingested the row started."""

RUN_ID = "_run_id"
"""Id of the run that wrote the row."""

REJECTED_REASON = "_rejected_reason"
"""Set by a table function on a row it rejects; such rows are routed to the quarantine table."""

RESCUED_DATA = "_rescued_data"
"""Raw text of a landing record that could not be parsed."""

RAW_FILE = "_raw_file"
"""Bytes of a landing file quarantined whole (unreadable), in the bronze table's quarantine."""

INGESTION_COLUMNS = (RESCUED_DATA, SOURCE_FILE, INGESTED_AT, RUN_ID, REJECTED_REASON, RAW_FILE)
"""The columns ingestion adds to a bronze table or its quarantine; no landing field may take their names."""
