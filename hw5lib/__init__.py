"""hw5: explain a trained CNN image classifier and write a reproducible report."""

__version__ = "0.1.0"
