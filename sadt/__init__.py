"""S-ADT: amortised reward-tilted sampling from language models."""

__version__ = "0.1.0"
