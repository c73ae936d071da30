"""Evaluation of the root-cause analysis on simulated incidents: `python -m bench.rca`."""
