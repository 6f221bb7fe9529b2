"""Lineage: OpenLineage events of table runs, and walks from landing files through the tables to feature
views and MLflow runs."""
