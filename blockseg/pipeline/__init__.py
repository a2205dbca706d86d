"""The whole run (``blockseg run``): config, run checks, workflow, tuning, summary and report."""
