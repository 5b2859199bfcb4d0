"""Errors that featureguard reports to users as one clear line (no traceback)."""

from __future__ import annotations


class FeatureguardError(Exception):
    """An expected user-facing error: bad input, a missing package, an unknown name.

    The CLI prints ``featureguard: error: <message>`` and exits non-zero; library callers
    catch it like any exception. ``hint`` is an optional second sentence saying what to do.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ModelNotFoundError(FeatureguardError):
    """A model alias, path or package that cannot be resolved."""


class SAEFormatError(FeatureguardError):
    """An SAE on disk in no known format, or whose tensors disagree with its config."""


class HookError(FeatureguardError):
    """A hook name that cannot be mapped onto the model (unknown family, layer out of range)."""


class PreflightError(FeatureguardError):
    """An SAE whose measured behaviour on the model disagrees with what it declares."""
