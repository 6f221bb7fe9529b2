"""The TPC-H medallion benchmark workload as a pipeline (`benchmarks/tpch/`)."""
