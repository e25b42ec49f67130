"""One version for both distributions: vlmad and vlmad-runtime are released together."""

__version__ = "0.2.0"
