"""The runner: set a run up, plan each stage to the time left, run it with its planned
settings, and record what it did (manifest.json, report.pdf); it names no stage."""
