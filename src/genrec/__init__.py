"""genrec: generative recommendation with LLMs, reproduced as a DVC + MLflow pipeline."""

__version__ = "0.1.0"
