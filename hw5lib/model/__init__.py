"""The model: what a checkpoint file holds and loading it safely (no code from the file runs
unless --trust-pickle), its layers and hooks, what a probe forward learns about it, and its
faster copies."""
