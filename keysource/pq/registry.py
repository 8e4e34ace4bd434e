"""Algorithm registry: which backend serves which algorithm, chosen at run time.

ML-KEM prefers liboqs when it is loaded (several times faster); every other
algorithm prefers the openssl backend and falls back to liboqs for the ones
only liboqs has (FrodoKEM, Classic McEliece, SLH-DSA, Falcon, ...).
Set ``QSECRET_DISABLE_LIBOQS=1`` to keep liboqs out entirely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

from . import liboqs_backend, openssl_backend
from .errors import BackendUnavailable, UnknownAlgorithm
from .interface import Kem, SignatureScheme

BACKENDS = ("openssl", "liboqs")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    detail: str
    kems: tuple[str, ...] = ()
    signatures: tuple[str, ...] = ()


@cache
def backend_status(name: str) -> BackendStatus:
    """Whether a backend can be used here, and in one line why (not)."""
    if name == "openssl":
        import cryptography

        return BackendStatus(
            "openssl",
            True,
            f"cryptography {cryptography.__version__}",
            tuple(openssl_backend.kem_names()),
            tuple(openssl_backend.signature_names()),
        )
    if name == "liboqs":
        if os.environ.get("QSECRET_DISABLE_LIBOQS") == "1":
            return BackendStatus("liboqs", False, "disabled by QSECRET_DISABLE_LIBOQS=1")
        try:
            version = liboqs_backend.liboqs_version()
        except BackendUnavailable as exc:
            return BackendStatus("liboqs", False, str(exc))
        return BackendStatus(
            "liboqs",
            True,
            f"liboqs {version}",
            tuple(liboqs_backend.kem_names()),
            tuple(liboqs_backend.signature_names()),
        )
    raise UnknownAlgorithm(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")


def forget_backends() -> None:
    """Look at the backends afresh (after ``QSECRET_DISABLE_LIBOQS`` changed in this process)."""
    backend_status.cache_clear()
    get_kem.cache_clear()
    get_signature.cache_clear()


def _kem_preference(name: str) -> tuple[str, ...]:
    return ("liboqs", "openssl") if name.startswith("ML-KEM-") else ("openssl", "liboqs")


@cache
def get_kem(name: str, backend: str | None = None) -> Kem:
    """The KEM ``name`` from ``backend``, or from the preferred available backend."""
    for candidate in (backend,) if backend else _kem_preference(name):
        status = backend_status(candidate)
        if not status.available:
            if backend:
                raise BackendUnavailable(f"backend {backend} is unavailable: {status.detail}")
            continue
        if name in status.kems:
            if candidate == "openssl":
                return openssl_backend.OpenSslMlKem(name)
            return liboqs_backend.LiboqsKem(name)
    raise UnknownAlgorithm(_missing("KEM", name, backend))


@cache
def get_signature(name: str, backend: str | None = None) -> SignatureScheme:
    """The signature scheme ``name`` from ``backend``, or from the preferred one."""
    for candidate in (backend,) if backend else ("openssl", "liboqs"):
        status = backend_status(candidate)
        if not status.available:
            if backend:
                raise BackendUnavailable(f"backend {backend} is unavailable: {status.detail}")
            continue
        if name in status.signatures:
            if candidate == "openssl":
                return openssl_backend.OpenSslSignature(name)
            return liboqs_backend.LiboqsSignature(name)
    raise UnknownAlgorithm(_missing("signature", name, backend))


def available_kems() -> dict[str, list[str]]:
    """Every usable KEM name mapped to the backends offering it, preferred first."""
    return _available(lambda s: s.kems, _kem_preference)


def available_signatures() -> dict[str, list[str]]:
    """Every usable signature name mapped to the backends offering it, preferred first."""
    return _available(lambda s: s.signatures, lambda _name: ("openssl", "liboqs"))


def _available(field, preference) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    found: dict[str, list[str]] = {}
    statuses = [backend_status(name) for name in BACKENDS]
    for status in statuses:
        if status.available:
            for alg in field(status):
                found.setdefault(alg, [])
    for alg in found:
        offering = {s.name for s in statuses if s.available and alg in field(s)}
        found[alg] = [b for b in preference(alg) if b in offering]
    return found


def _missing(kind: str, name: str, backend: str | None) -> str:
    where = f"backend {backend}" if backend else "any available backend"
    liboqs = backend_status("liboqs")
    hint = "" if liboqs.available else f" (liboqs: {liboqs.detail})"
    return f"{kind} {name!r} is not offered by {where}{hint}"
