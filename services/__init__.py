"""Coordination that lives as long as a run: config, run store, metrics, the CLI."""
