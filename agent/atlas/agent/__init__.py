"""The Atlas agent: collectors, local store and the encrypted sender."""

__version__ = "0.1.0"
