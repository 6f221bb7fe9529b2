"""Ingestion: landing-file sources, readers, schema drift, checkpoints."""
