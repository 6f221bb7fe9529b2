"""The parts of a run, each with one job: the run's shared scope, ingestion, building, the write of each kind,
definition changes, records and the hooks after a run. `engine.runner.Runner` puts them together."""
