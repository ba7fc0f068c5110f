"""The Atlas agent (see issue 3): collectors, local store and the encrypted sender."""

__version__ = "0.1.0"
