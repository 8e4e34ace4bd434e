"""ETSI GS QKD 014 v1.1.1 request parsing and response shapes, without any I/O.

The server (:mod:`keysource.kme.server`) and the SAE client (:mod:`keysource.kme.client`)
both use these, so field names are spelt in exactly one place.

Key sizes: the pool holds 256-bit keys. A request for ``size`` bits (a multiple of 8
between ``min_key_size`` and ``max_key_size``) is served by concatenating
``ceil(size / 256)`` pool keys and keeping the first ``size`` bits; the unused tail of the
last pool key is discarded, never reused. The delivered key's key_ID is the key_ID of its
first pool key, so both KMEs name it identically.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keysource.uuid_text import canonical_uuid

from .pool import POOL_KEY_BITS
from .sae_id import SAE_ID_RULE, sae_id_problem


@dataclass(frozen=True)
class Limits:
    """What one KME offers its SAEs (reported by the status endpoint)."""

    key_size: int = POOL_KEY_BITS  # default size when a request gives none
    max_key_per_request: int = 128
    max_key_size: int = 8192
    min_key_size: int = 8
    max_SAE_ID_count: int = 0


class EtsiError(Exception):
    """An error answered as ``{"message", "details"}`` with an HTTP status."""

    status = 400

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class BadRequest(EtsiError):
    status = 400


class Unauthorized(EtsiError):
    status = 401


class Unavailable(EtsiError):
    status = 503


@dataclass(frozen=True)
class EncKeysRequest:
    number: int
    size: int


@dataclass(frozen=True)
class DecKeysRequest:
    key_IDs: tuple[str, ...]


def check_sae_id(value: str, *, what: str = "SAE_ID") -> str:
    """The shared rule (:mod:`.sae_id`), refused as an ETSI 400 answer."""
    problem = sae_id_problem(value)
    if problem is not None:
        raise BadRequest(
            f"invalid {what}: {problem}",
            [{"parameter": what, "value": value[:80], "expected": SAE_ID_RULE}],
        )
    return value


def _int_field(raw: object, name: str) -> int:
    """Accept JSON integers, and decimal strings from the GET query form."""
    if isinstance(raw, bool):
        raise BadRequest(f"{name} must be an integer", [{"parameter": name}])
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"[0-9]{1,9}", raw):
        return int(raw)
    raise BadRequest(f"{name} must be an integer", [{"parameter": name, "value": str(raw)[:40]}])


def _check_extensions(body: Mapping[str, Any]) -> None:
    mandatory = body.get("extension_mandatory")
    if mandatory is not None:
        if not isinstance(mandatory, list) or not all(isinstance(e, dict) for e in mandatory):
            raise BadRequest("extension_mandatory must be an array of objects")
        names = sorted({name for ext in mandatory for name in ext})
        if names:
            # This KME implements no extensions; a mandatory one it does not know must fail.
            raise BadRequest(
                "not all mandatory extensions are supported",
                [{"extension_mandatory_unsupported": names}],
            )
    optional = body.get("extension_optional")
    if optional is not None and (
        not isinstance(optional, list) or not all(isinstance(e, dict) for e in optional)
    ):
        raise BadRequest("extension_optional must be an array of objects")


_ENC_FIELDS = {"number", "size", "additional_slave_SAE_IDs", "extension_mandatory",
               "extension_optional"}
_DEC_FIELDS = {"key_IDs", "key_IDs_extension", "extension_mandatory", "extension_optional"}


def parse_enc_keys(body: Mapping[str, Any], limits: Limits) -> EncKeysRequest:
    """Validate a Get key request (POST body, or the GET query as a mapping of strings)."""
    unknown = sorted(set(body) - _ENC_FIELDS)
    if unknown:
        raise BadRequest("unknown request fields", [{"unknown_fields": unknown}])
    number = _int_field(body.get("number", 1), "number")
    size = _int_field(body.get("size", limits.key_size), "size")
    if number < 1:
        raise BadRequest("number must be at least 1", [{"parameter": "number", "value": number}])
    if number > limits.max_key_per_request:
        raise BadRequest(
            "number of keys requested exceeds max_key_per_request",
            [{"number": number, "max_key_per_request": limits.max_key_per_request}],
        )
    if size % 8 != 0:
        raise BadRequest("size shall be a multiple of 8", [{"size": size}])
    if not limits.min_key_size <= size <= limits.max_key_size:
        raise BadRequest(
            "requested key size is out of range",
            [{"size": size, "min_key_size": limits.min_key_size,
              "max_key_size": limits.max_key_size}],
        )
    extra = body.get("additional_slave_SAE_IDs")
    if extra is not None:
        if not isinstance(extra, list) or not all(isinstance(s, str) for s in extra):
            raise BadRequest("additional_slave_SAE_IDs must be an array of strings")
        if len(extra) > limits.max_SAE_ID_count:
            raise BadRequest(
                "too many additional_slave_SAE_IDs",
                [{"requested": len(extra), "max_SAE_ID_count": limits.max_SAE_ID_count}],
            )
    _check_extensions(body)
    return EncKeysRequest(number=number, size=size)


def parse_dec_keys(body: Mapping[str, Any], limits: Limits) -> DecKeysRequest:
    """Validate a Get key with key IDs request (POST body ``{"key_IDs": [...]}``)."""
    unknown = sorted(set(body) - _DEC_FIELDS)
    if unknown:
        raise BadRequest("unknown request fields", [{"unknown_fields": unknown}])
    raw = body.get("key_IDs")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("key_IDs must be a non-empty array of {\"key_ID\": ...} objects")
    ids = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("key_ID"), str):
            raise BadRequest("each entry of key_IDs must be an object with a key_ID string")
        ids.append(normalise_key_id(item["key_ID"]))
    if len(ids) > limits.max_key_per_request:
        raise BadRequest(
            "number of key_IDs exceeds max_key_per_request",
            [{"number": len(ids), "max_key_per_request": limits.max_key_per_request}],
        )
    if len(set(ids)) != len(ids):
        raise BadRequest("key_IDs contains duplicates")
    _check_extensions(body)
    return DecKeysRequest(key_IDs=tuple(ids))


def normalise_key_id(value: str) -> str:
    try:
        return canonical_uuid(value)
    except ValueError:
        raise BadRequest("key_ID is not a UUID", [{"key_ID": value[:80]}]) from None


def status_body(
    *,
    source_kme: str,
    target_kme: str,
    master: str,
    slave: str,
    stored_key_count: int,
    max_key_count: int,
    limits: Limits,
) -> dict[str, Any]:
    """The Status data format (ETSI GS QKD 014 §6.1), counts in keys of ``key_size`` bits."""
    return {
        "source_KME_ID": source_kme,
        "target_KME_ID": target_kme,
        "master_SAE_ID": master,
        "slave_SAE_ID": slave,
        "key_size": limits.key_size,
        "stored_key_count": stored_key_count,
        "max_key_count": max_key_count,
        "max_key_per_request": limits.max_key_per_request,
        "max_key_size": limits.max_key_size,
        "min_key_size": limits.min_key_size,
        "max_SAE_ID_count": limits.max_SAE_ID_count,
    }
