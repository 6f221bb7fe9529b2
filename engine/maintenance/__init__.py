"""Keeping tables healthy: compaction and z-order, vacuum with pinned versions, and backups."""
