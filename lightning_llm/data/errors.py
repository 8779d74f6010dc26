"""The data pipeline's exceptions; the CLI prints each of them as one paragraph, without a traceback."""

from __future__ import annotations

from pathlib import Path


class PrepareError(RuntimeError):
    """A dataset that cannot be prepared, or an existing one that does not match the request."""


class ConfigError(PrepareError, ValueError):
    """A ``prepare`` setting that is invalid; raised before anything is read or written."""


class DataError(ValueError):
    """A dataset that is missing, incomplete, damaged, too small, or does not fit the model."""


class DatasetDamaged(DataError):
    """A prepared dataset whose files do not match what prepare wrote; ``problem`` says what is wrong."""

    problem: str = ""


def damaged(path: str | Path, problem: str) -> DatasetDamaged:
    """The error for a damaged dataset at ``path``: what is wrong, and that prepare rebuilds it."""
    err = DatasetDamaged(
        f"The dataset {path} is damaged: {problem}. Re-run prepare to rebuild it: `lightning-llm prepare "
        f"--output_dir {path}` with the settings that made it (it then finds the damage and rebuilds; "
        f"with other settings, or where it asks for it, add --overwrite true)."
    )
    err.problem = problem
    return err
