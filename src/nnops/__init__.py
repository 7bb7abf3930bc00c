"""nnops: a reproducible DVC + MLflow pipeline for Keras networks."""

__version__ = "0.1.0"
