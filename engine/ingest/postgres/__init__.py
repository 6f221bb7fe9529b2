"""PostgreSQL tables as bronze sources: a consistent snapshot read in parallel, then the changes since, from the
table's logical replication slot (built-in `pgoutput` plugin), each batch committed with its WAL position."""
