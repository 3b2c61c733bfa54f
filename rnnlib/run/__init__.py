"""Running experiments: the sweep (the one importer of the worker), the dashboard's background jobs, the CLI."""
