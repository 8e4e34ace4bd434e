"""Errors raised by the primitive layer; each carries a message a user can act on."""

from __future__ import annotations


class PqError(Exception):
    """Base class for every error of keysource.pq."""


class BackendUnavailable(PqError):
    """A backend cannot be used here; the message says why in one line."""


class UnknownAlgorithm(PqError):
    """No available backend offers the requested algorithm."""


class InvalidKey(PqError):
    """A public or secret key has the wrong size or encoding for its algorithm."""


class InvalidCiphertext(PqError):
    """A KEM ciphertext has the wrong size for its algorithm."""


class InvalidSignature(PqError):
    """A signature did not verify."""
