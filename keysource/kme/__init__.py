"""Key Management Entity: the QKD key pool, the ETSI GS QKD 014 server, the SAE client, the PKI.

- :mod:`.pool`   durable once-only key store (SQLite WAL)
- :mod:`.node`   one KME and the binding protocol with its peer KME
- :mod:`.server` ETSI 014 REST API over HTTPS with mutual TLS (aiohttp)
- :mod:`.client` SAE client: ``AsyncSaeClient`` / blocking ``SaeClient``
- :mod:`.http11` the one HTTP/1.1 client (h11) of every KME caller, KME-to-KME included
- :mod:`.pki`    CA, KME and SAE certificates
- :mod:`.link`   feeds the pools from the QKD link emulator (:mod:`keysource.qkd`)
- :mod:`.cli`    ``qsecret kme pair | serve | status | pki``
- :mod:`.network_node`, :mod:`.relay_store`, :mod:`.network_runtime`, :mod:`.network_cli`
  one node of a QKD network (key relay through trusted nodes) and ``qsecret network``
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keysource.lazy import lazy_getattr

# Loaded on first use, so 'qsecret kme ...' registering its parser (on every 'qsecret' start)
# does not import h11 and the SAE client.
_HOME = {
    **dict.fromkeys(["AsyncSaeClient", "KeyStatus", "KmeBadRequest", "KmeConnectionError",
                     "KmeError", "KmeProtocolError", "KmeUnauthorized", "KmeUnavailable",
                     "QkdKey", "SaeClient"], ".client"),
    "Pki": ".pki", "PkiError": ".pki",
    "KeyPool": ".pool", "PoolExhausted": ".pool", "PoolKey": ".pool",
}

if TYPE_CHECKING:
    from .client import (
        AsyncSaeClient,
        KeyStatus,
        KmeBadRequest,
        KmeConnectionError,
        KmeError,
        KmeProtocolError,
        KmeUnauthorized,
        KmeUnavailable,
        QkdKey,
        SaeClient,
    )
    from .pki import Pki, PkiError
    from .pool import KeyPool, PoolExhausted, PoolKey


__getattr__ = lazy_getattr(__name__, _HOME)


__all__ = [
    "AsyncSaeClient",
    "KeyPool",
    "KeyStatus",
    "KmeBadRequest",
    "KmeConnectionError",
    "KmeError",
    "KmeProtocolError",
    "KmeUnauthorized",
    "KmeUnavailable",
    "Pki",
    "PkiError",
    "PoolExhausted",
    "PoolKey",
    "QkdKey",
    "SaeClient",
]
