"""Errors that tell the user what to do next.

Every failure a user can cause (bad input, missing weights, no network, wrong layout) is raised as a
:class:`VlmadError` carrying a *hint*; the CLI prints message + hint without a traceback.
"""

from __future__ import annotations


class VlmadError(Exception):
    """Base class for user-facing errors; ``hint`` says how to fix the problem."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class WeightsUnavailableError(VlmadError):
    """Pretrained weights could not be obtained (offline, unknown tag, missing file)."""


class CheckpointMismatchError(VlmadError):
    """A checkpoint does not fit the requested architecture."""


class UnknownNameError(VlmadError):
    """An unknown model, method, prompt set or dataset name."""


class ImageLoadError(VlmadError):
    """An image file could not be read or decoded."""

    def __init__(self, path: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"cannot read image {path}: {reason}", hint)
        self.path = path
        self.reason = reason


class DatasetLayoutError(VlmadError):
    """A dataset on disk does not follow the expected layout."""


class NotReadyError(VlmadError):
    """A detector method was called before the state it needs exists (e.g. predict before setup)."""
