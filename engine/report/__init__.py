"""`medallion report`: a static HTML page of a root's pipelines, tables, runs, quality and freshness."""
