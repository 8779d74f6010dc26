"""The data pipeline's exceptions; the CLI prints each of them as one paragraph, without a traceback."""

from __future__ import annotations


class PrepareError(RuntimeError):
    """A dataset that cannot be prepared, or an existing one that does not match the request."""


class ConfigError(PrepareError, ValueError):
    """A ``prepare`` setting that is invalid; raised before anything is read or written."""


class DataError(ValueError):
    """A dataset that is missing, incomplete, damaged, too small, or does not fit the model."""
