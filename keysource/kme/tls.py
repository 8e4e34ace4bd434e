"""An SAE's TLS client context (stdlib ``ssl`` only).

Apart from ``pki`` so that the messenger, which only presents its certificate, does not
load the x509 code that issues certificates.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class PkiError(Exception):
    """The PKI directory is missing something or an identity is invalid."""


def client_ssl_context(*, ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """TLS 1.2+ client context presenting ``cert``/``key`` and trusting only ``ca``."""
    for path in (ca, cert, key):
        if not Path(path).exists():
            raise PkiError(f"missing file {path}")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
