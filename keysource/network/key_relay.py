"""Key relay by trusted nodes (ITU-T Y.3803 / Q.4163), sans-I/O.

A key K for SAEs at nodes X and Y that share no link travels X -> ... -> Y along a route.
On each hop it is one-time padded with a key of that link's pool (``K xor pad``) and
authenticated with a one-time Poly1305 key from the same pool; each trusted node removes
the pad of the hop it came over and applies the next one, so K is in the clear only inside
trusted nodes. Each hop spends two link keys (:data:`KEYS_PER_HOP`), named in the frame by
their key IDs: the two ends of a link hold the same pool, and a key ID is used once.

Delivery is two-phase: Y keeps K for the slave SAE and sends a CONFIRM back along the route
(authenticated hop by hop, one link key per hop); X gives K to the master SAE only once the
CONFIRM arrives. A relay that dies half-way leaves no key usable at one end only: X never
releases K, Y's copy is bound to a key_ID the master never learns, and expires.

This module holds the frames, their canonical bytes (what the MAC covers), sealing and
opening one hop, and a ledger of relays seen (replays) and keys waiting for confirmation.
Taking keys from pools and sending frames is the node's shell.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from keysource.uuid_text import canonical_uuid

KEY_BYTES = 32
TAG_BYTES = 16
KEYS_PER_HOP = 2  # the pad and the MAC key
MAX_ROUTE = 64
_DOMAIN_RELAY = b"qsecret/v1/key-relay\x00"
_DOMAIN_CONFIRM = b"qsecret/v1/key-relay-confirm\x00"
REASONS = ("malformed", "bad_mac", "replayed", "not_on_route", "unknown_relay", "expired",
           "unknown_key", "unknown_sae")


class RelayRefused(Exception):
    """A relay frame refused; ``reason`` (one of REASONS) is what nodes count. The message
    never contains key material."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _lp(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">H", len(data)) + data


def _xor(a: bytes, b: bytes) -> bytes:
    if len(a) != len(b):
        raise RelayRefused("malformed", "pad and key differ in length")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _uuid(value: object, name: str) -> str:
    try:
        return canonical_uuid(str(value))
    except ValueError:
        raise RelayRefused("malformed", f"{name} is not a UUID") from None


def parse_uuid(value: object, name: str) -> str:
    """``value`` as a canonical UUID string, or RelayRefused("malformed") naming ``name``."""
    return _uuid(value, name)


def _text(value: object, name: str, limit: int = 128) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise RelayRefused("malformed", f"{name} must be 1-{limit} printable characters")
    return value


def _hex(value: object, name: str, size: int) -> bytes:
    try:
        data = bytes.fromhex(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RelayRefused("malformed", f"{name} is not hex") from None
    if len(data) != size:
        raise RelayRefused("malformed", f"{name} must be {size} bytes")
    return data


@dataclass(frozen=True)
class RelayHeader:
    """Who the key is for, which way it goes, where it is, and which link keys pad this hop."""

    relay_id: str
    key_id: str  # the end-to-end key's ID, as the SAEs will see it
    master: str
    slave: str
    route: tuple[str, ...]  # node names, X first, Y last
    hop: int  # index in route of the node that sent this frame
    pad_id: str  # link key IDs on the link route[hop] ~ route[hop + 1]
    mac_id: str

    def __post_init__(self) -> None:
        if not 2 <= len(self.route) <= MAX_ROUTE or len(set(self.route)) != len(self.route):
            raise RelayRefused("malformed", "a route names 2 to 64 distinct nodes")
        if not 0 <= self.hop < len(self.route) - 1:
            raise RelayRefused("malformed", f"hop {self.hop} is not on a route of "
                                            f"{len(self.route)} nodes")
        if self.pad_id == self.mac_id:
            raise RelayRefused("malformed", "the pad and the MAC key must be different keys")

    @property
    def sender(self) -> str:
        return self.route[self.hop]

    @property
    def receiver(self) -> str:
        return self.route[self.hop + 1]

    @property
    def last_hop(self) -> bool:
        return self.hop + 2 == len(self.route)

    def signed_bytes(self) -> bytes:
        """What the hop's MAC covers with the ciphertext: every field, length-prefixed."""
        return (_DOMAIN_RELAY + _lp(self.relay_id) + _lp(self.key_id) + _lp(self.master)
                + _lp(self.slave) + struct.pack(">HH", len(self.route), self.hop)
                + b"".join(_lp(n) for n in self.route) + _lp(self.pad_id) + _lp(self.mac_id))

    def to_json(self) -> dict[str, object]:
        return {"relay_id": self.relay_id, "key_ID": self.key_id, "master_SAE_ID": self.master,
                "slave_SAE_ID": self.slave, "route": list(self.route), "hop": self.hop,
                "pad_ID": self.pad_id, "mac_ID": self.mac_id}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RelayHeader:
        route = data.get("route")
        hop = data.get("hop")
        if not isinstance(route, list) or not isinstance(hop, int) or isinstance(hop, bool):
            raise RelayRefused("malformed", "route must be a list and hop an integer")
        return cls(_uuid(data.get("relay_id"), "relay_id"), _uuid(data.get("key_ID"), "key_ID"),
                   _text(data.get("master_SAE_ID"), "master_SAE_ID"),
                   _text(data.get("slave_SAE_ID"), "slave_SAE_ID"),
                   tuple(_text(n, "route[]", 63) for n in route), hop,
                   _uuid(data.get("pad_ID"), "pad_ID"), _uuid(data.get("mac_ID"), "mac_ID"))


@dataclass(frozen=True, repr=False)
class RelayFrame:
    """One hop of a relayed key: the header, ``K xor pad`` and the hop's tag."""

    header: RelayHeader
    ciphertext: bytes
    tag: bytes

    def __repr__(self) -> str:  # the ciphertext is K under a one-time pad: harmless, but
        return f"RelayFrame({self.header.relay_id}, hop {self.header.hop})"  # kept out of logs

    def to_json(self) -> dict[str, object]:
        return {**self.header.to_json(), "ciphertext": self.ciphertext.hex(),
                "tag": self.tag.hex()}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> RelayFrame:
        return cls(RelayHeader.from_json(data), _hex(data.get("ciphertext"), "ciphertext",
                                                     KEY_BYTES),
                   _hex(data.get("tag"), "tag", TAG_BYTES))


def new_relay(key_id: str, master: str, slave: str, route: list[str] | tuple[str, ...],
              pad_id: str, mac_id: str) -> RelayHeader:
    """The first hop's header of a new relay (a fresh relay_id)."""
    return RelayHeader(str(uuid.uuid4()), key_id, master, slave, tuple(route), 0, pad_id,
                       mac_id)


def next_hop(header: RelayHeader, pad_id: str, mac_id: str) -> RelayHeader:
    """The header a trusted node sends on, padded with the next link's keys."""
    if header.last_hop:
        raise RelayRefused("malformed", "the key is at its last node: nothing to forward")
    return replace(header, hop=header.hop + 1, pad_id=pad_id, mac_id=mac_id)


def seal_hop(header: RelayHeader, key: bytes, pad: bytes, mac_key: bytes) -> RelayFrame:
    """``key`` padded with the link key ``pad`` and authenticated with ``mac_key``."""
    if len(key) != KEY_BYTES or len(pad) != KEY_BYTES or len(mac_key) != KEY_BYTES:
        raise ValueError("key, pad and MAC key must be 32 bytes each")
    ciphertext = _xor(key, pad)
    tag = Poly1305.generate_tag(mac_key, header.signed_bytes() + ciphertext)
    return RelayFrame(header, ciphertext, tag)


def open_hop(frame: RelayFrame, pad: bytes, mac_key: bytes, here: str) -> bytes:
    """The relayed key, once the tag checks and the frame is for node ``here``."""
    if frame.header.receiver != here:
        raise RelayRefused("not_on_route", f"relay {frame.header.relay_id} hop "
                                           f"{frame.header.hop} is for "
                                           f"{frame.header.receiver}, not {here}")
    try:
        Poly1305.verify_tag(mac_key, frame.header.signed_bytes() + frame.ciphertext,
                            frame.tag)
    except InvalidSignature:
        raise RelayRefused("bad_mac", f"relay {frame.header.relay_id} hop {frame.header.hop}"
                                      " failed authentication") from None
    return _xor(frame.ciphertext, pad)


# ---------------------------------------------------------------- phase two: confirmation


@dataclass(frozen=True)
class Confirm:
    """Y holds the key: sent back along the route, one authenticated hop at a time."""

    relay_id: str
    key_id: str
    route: tuple[str, ...]
    hop: int  # index in route of the node sending this confirm (Y first, moving back)
    mac_id: str
    tag: bytes = b""

    @property
    def receiver(self) -> str:
        return self.route[self.hop - 1]

    def signed_bytes(self) -> bytes:
        return (_DOMAIN_CONFIRM + _lp(self.relay_id) + _lp(self.key_id)
                + struct.pack(">HH", len(self.route), self.hop)
                + b"".join(_lp(n) for n in self.route) + _lp(self.mac_id))

    def to_json(self) -> dict[str, object]:
        return {"relay_id": self.relay_id, "key_ID": self.key_id, "route": list(self.route),
                "hop": self.hop, "mac_ID": self.mac_id, "tag": self.tag.hex()}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Confirm:
        route = data.get("route")
        hop = data.get("hop")
        if (not isinstance(route, list) or not isinstance(hop, int) or isinstance(hop, bool)
                or not 2 <= len(route) <= MAX_ROUTE or not 0 < hop < len(route)):
            raise RelayRefused("malformed", "a confirm needs a route and a hop on it")
        return cls(_uuid(data.get("relay_id"), "relay_id"), _uuid(data.get("key_ID"), "key_ID"),
                   tuple(_text(n, "route[]", 63) for n in route), hop,
                   _uuid(data.get("mac_ID"), "mac_ID"), _hex(data.get("tag"), "tag", TAG_BYTES))


def seal_confirm(confirm: Confirm, mac_key: bytes) -> Confirm:
    return replace(confirm, tag=Poly1305.generate_tag(mac_key, confirm.signed_bytes()))


def open_confirm(confirm: Confirm, mac_key: bytes, here: str) -> None:
    """Raise RelayRefused unless ``confirm`` is authentic and meant for node ``here``."""
    if confirm.receiver != here:
        raise RelayRefused("not_on_route", f"confirm of relay {confirm.relay_id} is for "
                                           f"{confirm.receiver}, not {here}")
    try:
        Poly1305.verify_tag(mac_key, confirm.signed_bytes(), confirm.tag)
    except InvalidSignature:
        raise RelayRefused("bad_mac", f"confirm of relay {confirm.relay_id} failed "
                                      "authentication") from None


# ---------------------------------------------------------------- the node's ledger


@dataclass
class Pending:
    """A key X relayed and holds until Y confirms it (or the deadline passes)."""

    key_id: str
    master: str
    slave: str
    key: bytes
    deadline: float


class RelayLedger:
    """One node's memory of relays: which it has seen (a repeat is a replay) and which of
    its own wait for confirmation. Bounded: the oldest relay IDs are forgotten first, after
    ``remember_s`` (a repeat that late names link keys long used, so it fails anyway)."""

    def __init__(self, *, confirm_timeout_s: float = 30.0, remember_s: float = 600.0,
                 max_remembered: int = 100_000) -> None:
        self.confirm_timeout_s = confirm_timeout_s
        self.remember_s = remember_s
        self.max_remembered = max_remembered
        self._seen: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._pending: dict[str, Pending] = {}
        self.refused: dict[str, int] = dict.fromkeys(REASONS, 0)

    def refuse(self, exc: RelayRefused) -> RelayRefused:
        """Count a refusal (returns it, to be raised or logged by the caller)."""
        self.refused[exc.reason] += 1
        return exc

    def check_new(self, header: RelayHeader, now: float | None = None) -> None:
        """Refuse a frame of a relay already seen at this hop; remember it otherwise."""
        now = time.monotonic() if now is None else now
        self._forget(now)
        key = (header.relay_id, header.hop)
        if key in self._seen:
            raise self.refuse(RelayRefused("replayed", f"relay {header.relay_id} hop "
                                                       f"{header.hop} was seen before"))
        self._seen[key] = now

    def _forget(self, now: float) -> None:
        while self._seen and (len(self._seen) >= self.max_remembered
                              or next(iter(self._seen.values())) < now - self.remember_s):
            self._seen.popitem(last=False)

    def hold(self, header: RelayHeader, key: bytes, now: float | None = None) -> None:
        """X sent ``key`` on its way: keep it until Y confirms."""
        now = time.monotonic() if now is None else now
        self._pending[header.relay_id] = Pending(header.key_id, header.master, header.slave,
                                                 key, now + self.confirm_timeout_s)

    def confirmed(self, confirm: Confirm, now: float | None = None) -> Pending:
        """Y holds the key: hand it to the master SAE now (and never again)."""
        now = time.monotonic() if now is None else now
        pending = self._pending.pop(confirm.relay_id, None)
        if pending is None or pending.key_id != confirm.key_id:
            raise self.refuse(RelayRefused("unknown_relay", f"no key waits for relay "
                                                            f"{confirm.relay_id}"))
        if now > pending.deadline:
            raise self.refuse(RelayRefused("expired", f"relay {confirm.relay_id} was "
                                                      "confirmed after its deadline"))
        return pending

    def discard(self, relay_id: str) -> None:
        """X gives up a relay (its confirmation failed): the key is never handed out."""
        self._pending.pop(relay_id, None)

    def expire(self, now: float | None = None) -> list[Pending]:
        """Keys whose confirmation never came: dropped (the caller destroys them)."""
        now = time.monotonic() if now is None else now
        gone = [rid for rid, p in self._pending.items() if p.deadline < now]
        return [self._pending.pop(rid) for rid in gone]

    @property
    def waiting(self) -> int:
        return len(self._pending)


__all__ = ["KEYS_PER_HOP", "KEY_BYTES", "REASONS", "Confirm", "Pending", "RelayFrame",
           "RelayHeader", "RelayLedger", "RelayRefused", "new_relay", "next_hop",
           "open_confirm", "open_hop", "seal_confirm", "seal_hop"]
