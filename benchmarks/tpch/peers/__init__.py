"""Peer implementations of the TPC-H medallion workload."""
