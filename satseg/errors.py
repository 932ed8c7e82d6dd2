"""Exceptions that the CLI turns into a one-line message and an exit code.

Exit codes (documented in README): 0 ok, 1 runtime error, 2 usage error (bad input, bad option),
3 some cases of a cohort failed.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_COHORT_FAILED = 3


class SatsegError(Exception):
    """Base class: a failure we can explain in one line."""

    exit_code = EXIT_RUNTIME


class InputError(SatsegError):
    """The user's input (scan, prompt, option) cannot be used."""

    exit_code = EXIT_USAGE


class PromptError(InputError):
    """A prompt cannot be resolved to terms the model was trained on."""


class CheckpointError(SatsegError):
    """A weights file is missing, corrupt, unsafe or does not fit the architecture."""


class WeightsError(SatsegError):
    """A named model cannot be resolved, downloaded or verified."""
