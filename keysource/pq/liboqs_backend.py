"""The optional liboqs backend, through liboqs-python.

Importing ``oqs`` when the liboqs shared library is missing makes liboqs-python
``git clone`` and build liboqs and then exit the process. So this module looks
for the library itself first, exactly where liboqs-python would look
(``$OQS_INSTALL_PATH/lib*``, else ``~/_oqs/lib*``, and the system library path),
proves it loads with ctypes, and only then imports ``oqs``.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import io
import logging
import os
import sys
import sysconfig
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .errors import BackendUnavailable, InvalidCiphertext, InvalidKey, InvalidSignature
from .interface import Kem, KemSizes, KeyPair, SignatureScheme, SignatureSizes, check_length
from .openssl_backend import SIGNATURE_CONTEXT

BACKEND = "liboqs"

_ML_KEM_SEED_BYTES = 64


@dataclass(frozen=True)
class LiboqsLocation:
    """Where the shared library was found, or why it was not."""

    path: Path | None
    reason: str


def _library_file_names() -> list[str]:
    if sys.platform == "darwin":
        return ["liboqs.dylib"]
    if sys.platform == "win32":
        return ["oqs.dll", "liboqs.dll"]
    return ["liboqs.so"]


def _system_candidates() -> list[str]:
    """liboqs on the system, found without running a program.

    ``ctypes.util.find_library`` runs ldconfig, gcc and ld when the library is absent:
    tens of milliseconds of start-up for every client that signs its login. A bare name
    makes dlopen search LD_LIBRARY_PATH and the linker cache itself; the globs find an
    install that has only the versioned file (liboqs.so.N, no development symlink).
    """
    names = _library_file_names()
    if sys.platform == "win32":
        return names
    dirs = ["/usr/local/lib", "/usr/local/lib64", "/usr/lib", "/usr/lib64"]
    if sys.platform == "darwin":
        dirs.append("/opt/homebrew/lib")
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        dirs += [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"]
    versioned = [match for folder in dirs for name in names
                 for match in sorted(glob.glob(os.path.join(folder, name + ".*")))]
    return [*names, *versioned]


def locate_liboqs(
    environ: Mapping[str, str] | None = None, home: Path | None = None
) -> LiboqsLocation:
    """Find a loadable liboqs without importing ``oqs``."""
    environ = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    base = Path(environ["OQS_INSTALL_PATH"]) if "OQS_INSTALL_PATH" in environ else home / "_oqs"
    candidates: list[str] = [
        str(base / sub / name) for sub in ("lib", "lib64") for name in _library_file_names()
    ]
    candidates += _system_candidates()
    errors: list[str] = []
    for candidate in candidates:
        on_disk = os.sep in candidate
        if on_disk and not Path(candidate).exists():
            continue
        try:
            ctypes.CDLL(candidate)
        except OSError as exc:
            if on_disk:  # a bare name dlopen cannot find is simply not installed
                errors.append(f"{candidate}: {exc}")
            continue
        return LiboqsLocation(Path(candidate), f"liboqs loaded from {candidate}")
    where = "OQS_INSTALL_PATH" if "OQS_INSTALL_PATH" in environ else "~/_oqs"
    reason = f"liboqs shared library not found (looked in {where}/lib and the system path)"
    if errors:
        reason = f"liboqs shared library present but not loadable: {errors[0]}"
    return LiboqsLocation(None, reason)


_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


def load_oqs() -> ModuleType:
    """Import ``oqs`` once, only after the shared library was found; else raise why not."""
    global _module, _failure
    with _lock:
        if _module is not None:
            return _module
        if _failure is not None:
            raise BackendUnavailable(_failure)
        location = locate_liboqs()
        if location.path is None:
            _failure = location.reason
            raise BackendUnavailable(_failure)
        if "OQS_INSTALL_PATH" not in os.environ and location.path.parent.name in ("lib", "lib64"):
            # Pin liboqs-python to the very library we proved loadable.
            os.environ["OQS_INSTALL_PATH"] = str(location.path.parent.parent)
        # liboqs-python logs at import, at INFO (a level it sets itself) to a stdout handler
        # of its own and through ours: keep its INFO lines out of both.
        oqs_logger = logging.getLogger("oqs.oqs")
        oqs_logger.addFilter(lambda record: record.levelno >= logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):
            import oqs
        oqs_logger.setLevel(logging.WARNING)
        for handler in list(oqs_logger.handlers):
            oqs_logger.removeHandler(handler)
        _module = oqs
        return oqs


def liboqs_version() -> str:
    return str(load_oqs().oqs_version())


class LiboqsKem(Kem):
    backend = BACKEND

    def __init__(self, name: str) -> None:
        oqs = load_oqs()
        self.name = name
        self._oqs = oqs
        with oqs.KeyEncapsulation(name) as probe:
            details = probe.details
        # ML-KEM secret keys are kept as their 64-byte seed so both backends share them.
        self._seeded = name.startswith("ML-KEM-")
        self.sizes = KemSizes(
            public_key=details["length_public_key"],
            secret_key=_ML_KEM_SEED_BYTES if self._seeded else details["length_secret_key"],
            ciphertext=details["length_ciphertext"],
            shared_secret=details["length_shared_secret"],
        )

    def generate_keypair(self) -> KeyPair:
        if self._seeded:
            return self.keypair_from_seed(os.urandom(_ML_KEM_SEED_BYTES))
        with self._oqs.KeyEncapsulation(self.name) as kem:
            public_key = kem.generate_keypair()
            return KeyPair(bytes(public_key), bytes(kem.export_secret_key()))

    def keypair_from_seed(self, seed: bytes) -> KeyPair:
        """Derive an ML-KEM key pair from a 64-byte ``d || z`` seed."""
        check_length(f"{self.name} seed", seed, _ML_KEM_SEED_BYTES, InvalidKey)
        with self._oqs.KeyEncapsulation(self.name) as kem:
            public_key = kem.generate_keypair_seed(seed)
        return KeyPair(bytes(public_key), bytes(seed))

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        check_length(f"{self.name} public key", public_key, self.sizes.public_key, InvalidKey)
        with self._oqs.KeyEncapsulation(self.name) as kem:
            ciphertext, shared_secret = kem.encap_secret(public_key)
        return bytes(ciphertext), bytes(shared_secret)

    def decapsulate(self, secret_key: bytes, ciphertext: bytes) -> bytes:
        check_length(
            f"{self.name} ciphertext", ciphertext, self.sizes.ciphertext, InvalidCiphertext
        )
        check_length(f"{self.name} secret key", secret_key, self.sizes.secret_key, InvalidKey)
        if self._seeded:
            with self._oqs.KeyEncapsulation(self.name) as kem:
                kem.generate_keypair_seed(secret_key)
                return bytes(kem.decap_secret(ciphertext))
        with self._oqs.KeyEncapsulation(self.name, secret_key) as kem:
            return bytes(kem.decap_secret(ciphertext))


class LiboqsSignature(SignatureScheme):
    backend = BACKEND

    def __init__(self, name: str, context: bytes = SIGNATURE_CONTEXT) -> None:
        oqs = load_oqs()
        self.name = name
        self._oqs = oqs
        with oqs.Signature(name) as probe:
            details = probe.details
        self._context = context if oqs.sig_supports_context(name) else None
        self.sizes = SignatureSizes(
            public_key=details["length_public_key"],
            secret_key=details["length_secret_key"],
            signature=details["length_signature"],
        )

    def generate_keypair(self) -> KeyPair:
        with self._oqs.Signature(self.name) as sig:
            public_key = sig.generate_keypair()
            return KeyPair(bytes(public_key), bytes(sig.export_secret_key()))

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        check_length(f"{self.name} secret key", secret_key, self.sizes.secret_key, InvalidKey)
        with self._oqs.Signature(self.name, secret_key) as sig:
            if self._context is not None:
                return bytes(sig.sign_with_ctx_str(message, self._context))
            return bytes(sig.sign(message))

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        check_length(f"{self.name} public key", public_key, self.sizes.public_key, InvalidKey)
        if len(signature) > self.sizes.signature:
            raise InvalidSignature(
                f"{self.name} signature longer than {self.sizes.signature} bytes"
            )
        with self._oqs.Signature(self.name) as sig:
            if self._context is not None:
                ok = sig.verify_with_ctx_str(message, signature, self._context, public_key)
            else:
                ok = sig.verify(message, signature, public_key)
        if not ok:
            raise InvalidSignature(f"{self.name} signature does not verify")


def kem_names() -> list[str]:
    return list(load_oqs().get_enabled_kem_mechanisms())


def signature_names() -> list[str]:
    return list(load_oqs().get_enabled_sig_mechanisms())
