"""Errors of the model registry and asset fetching (importable without torch)."""

from __future__ import annotations


class ModelUnavailableError(RuntimeError):
    """A model that is neither on local disk nor downloadable (offline, or hub unreachable)."""


class AssetVerificationError(RuntimeError):
    """A fetched file whose size or sha256 differs from the expected one (it is not kept)."""
