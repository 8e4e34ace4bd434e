"""Control frames: JSON text frames, version 1, every field checked before use.

Each frame is a JSON object ``{"v": 1, "t": TYPE, ...fields}``. Unknown types,
unknown fields, missing fields, wrong types and oversized values are refused
with a :class:`WireError` carrying an error code (see ``errors.ERROR_CODES``).
Bytes travel as standard base64. ``id`` is an optional request ID echoed in
the reply, so a client can match answers to questions.

Two directions, two parsers: :func:`parse_client_frame` (what the relay
accepts) and :func:`parse_server_frame` (what a client accepts).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from keysource.pq.sizes import (
    CONSERVATIVE_KEMS,
    KEM_SIZES,
    PREKEY_KEMS,
    hybrid_signature_size,
    largest_public_key,
)

from .codec import HANDLE_RE, MSG_ID_RE, b64decode, b64encode, check_handle, check_msg_id
from .errors import WireError

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Sizes of the hybrid identity (Ed25519 + ML-DSA-65), from keysource.pq's table of
# published sizes (a relay without liboqs must size its limits for keys liboqs makes).
_HYBRID = hybrid_signature_size()
HYBRID_PUBLIC_KEY_BYTES = _HYBRID.public_key  # 32 + 1952
HYBRID_SIGNATURE_BYTES = _HYBRID.signature  # 64 + 3309
NONCE_BYTES = 32

MAX_ENVELOPE_BYTES = 64 * 1024  # sealed envelope body
MAX_ACK_SEQS = 1024  # seqs in one ack frame
MAX_STORED_MSGS = 1024  # message IDs in one stored_many frame
MAX_GROUP_RECIPIENTS = 99  # send_group: a group of up to 100 members, less the sender
MAX_ONE_TIME_PER_UPLOAD = 50
MAX_REQ_ID_CHARS = 64
# The client-defined signed part holds an X25519 identity and prekey, an ML-KEM prekey
# and optionally one conservative KEM prekey (Classic McEliece: half a megabyte), plus
# short texts (SAE_ID, KME hint, algorithm names: at most 255 bytes each) and framing.
SIGNED_PART_TEXT_BYTES = 4096
MAX_SIGNED_PART_BYTES = (2 * KEM_SIZES["X25519"].public_key + largest_public_key(PREKEY_KEMS)
                         + largest_public_key(CONSERVATIVE_KEMS) + SIGNED_PART_TEXT_BYTES)
MAX_ONE_TIME_KEY_BYTES = largest_public_key(PREKEY_KEMS)  # one-time prekeys are ML-KEM keys


def _b64_chars(size: int) -> int:
    return (size + 2) // 3 * 4


def largest_prekeys_upload_chars() -> int:
    """Characters of the largest ``prekeys_upload`` any supported algorithm set can make.

    Upper bound of the JSON text: every field at its maximum, every number at its widest.
    """
    one_time = (len('{"id":4294967295,"key":"","sig":""},') + _b64_chars(MAX_ONE_TIME_KEY_BYTES)
                + _b64_chars(HYBRID_SIGNATURE_BYTES))
    skeleton = len('{"v":1,"t":"prekeys_upload","bundle":{"identity":"","signed":"",'
                   '"signed_sig":"","one_time":[]},"id":""}')
    return (skeleton + MAX_REQ_ID_CHARS + _b64_chars(HYBRID_PUBLIC_KEY_BYTES)
            + _b64_chars(MAX_SIGNED_PART_BYTES) + _b64_chars(HYBRID_SIGNATURE_BYTES)
            + MAX_ONE_TIME_PER_UPLOAD * one_time)


# websocket max_size: the largest frame of any kind. The prekey upload is the largest text
# frame (about 1 MiB with Classic McEliece); binary frames are far below (relay.wire.binary).
# Rounded up to 64 KiB so the announced limit reads well.
_FRAME_ROUNDING = 64 * 1024
MAX_FRAME_BYTES = -(-largest_prekeys_upload_chars() // _FRAME_ROUNDING) * _FRAME_ROUNDING
MAX_RELAY_ID_CHARS = 128

_REQ_ID_RE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQ_ID_CHARS}}}")
_STREAM_RE = re.compile(r"[0-9a-f]{32}")
_RELAY_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
STREAM_KINDS = ("file", "media")
_MAX_INT = 2**53 - 1  # exact in every JSON implementation


# ---------------------------------------------------------------- field checkers


def _req_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not _REQ_ID_RE.fullmatch(value):
        raise WireError("bad_field", f"{name} must be 1-64 chars of A-Z a-z 0-9 . _ : -")
    return value


def _uint(name: str, value: object) -> int:
    # bool is an int in Python; JSON true must not pass as 1.
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise WireError("bad_field", f"{name} must be an integer 0..2^53-1")
    return value


def _bool(name: str, value: object) -> bool:
    if type(value) is not bool:
        raise WireError("bad_field", f"{name} must be true or false")
    return value


def _text(pattern: re.Pattern[str], what: str) -> Callable[[str, object], str]:
    def check(name: str, value: object) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise WireError("bad_field", f"{name} must be {what}")
        return value

    return check


def _short_text(max_chars: int) -> Callable[[str, object], str]:
    def check(name: str, value: object) -> str:
        if not isinstance(value, str) or len(value) > max_chars:
            raise WireError("bad_field", f"{name} must be a string of at most {max_chars} chars")
        return value

    return check


def _choice(options: tuple[str, ...]) -> Callable[[str, object], str]:
    def check(name: str, value: object) -> str:
        if value not in options:
            raise WireError("bad_field", f"{name} must be one of {', '.join(options)}")
        return value  # type: ignore[return-value]

    return check


def _b64(max_bytes: int, min_bytes: int = 0) -> Callable[[str, object], bytes]:
    def check(name: str, value: object) -> bytes:
        return b64decode(name, value, max_bytes=max_bytes, min_bytes=min_bytes)

    return check


def _exact_b64(size: int) -> Callable[[str, object], bytes]:
    return _b64(size, size)


def _uint_list(max_items: int) -> Callable[[str, object], tuple[int, ...]]:
    def check(name: str, value: object) -> tuple[int, ...]:
        if not isinstance(value, list) or not 1 <= len(value) <= max_items:
            raise WireError("bad_field", f"{name} must be a list of 1..{max_items} integers")
        return tuple(_uint(name, item) for item in value)

    return check


def _int_map(max_items: int) -> Callable[[str, object], dict[str, int]]:
    def check(name: str, value: object) -> dict[str, int]:
        if not isinstance(value, dict) or len(value) > max_items:
            raise WireError("bad_field", f"{name} must be an object of at most {max_items} ints")
        return {str(k): _uint(f"{name}.{k}", v) for k, v in value.items()}

    return check


def _msg_id_list(max_items: int) -> Callable[[str, object], tuple[str, ...]]:
    def check(name: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not 1 <= len(value) <= max_items:
            raise WireError("bad_field", f"{name} must be a list of 1..{max_items} message IDs")
        return tuple(check_msg_id(name, item) for item in value)

    return check


def _handle_set(max_items: int) -> Callable[[str, object], tuple[str, ...]]:
    def check(name: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not 1 <= len(value) <= max_items:
            raise WireError("bad_field", f"{name} must be a list of 1..{max_items} handles")
        handles = tuple(check_handle(name, item) for item in value)
        if len(set(handles)) != len(handles):
            raise WireError("bad_field", f"{name} names a handle twice")
        return handles

    return check


def _refusals(max_items: int) -> Callable[[str, object], tuple[tuple[str, str], ...]]:
    def check(name: str, value: object) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, list) or len(value) > max_items or not all(
                isinstance(item, list) and len(item) == 2 for item in value):
            raise WireError("bad_field", f"{name} must be a list of at most {max_items} "
                                         "[handle, code] pairs")
        return tuple((check_handle(name, handle), _short_text(64)(name, code))
                     for handle, code in value)

    return check


_stream = _text(_STREAM_RE, "32 lowercase hex digits")
_relay_id = _text(_RELAY_ID_RE, "1-128 printable ASCII chars")


# ---------------------------------------------------------------- prekey bundle


@dataclass(frozen=True)
class OneTimePrekey:
    """One one-time prekey: ``key_id`` is the owner's number for it, ``sig`` signs it."""

    key_id: int
    key: bytes
    sig: bytes

    def to_json(self) -> dict[str, Any]:
        return {"id": self.key_id, "key": b64encode(self.key), "sig": b64encode(self.sig)}


@dataclass(frozen=True)
class PrekeyBundle:
    """What a user publishes so others can start a session while they are offline.

    ``identity`` is the owner's hybrid public key; ``signed`` is opaque to the
    relay (the client protocol defines it: X25519 and ML-KEM prekeys, SAE_ID,
    KME hint); ``signed_sig`` and every ``OneTimePrekey.sig`` are hybrid
    signatures by ``identity`` over the encodings in :mod:`relay.wire.prekeys`.
    """

    identity: bytes
    signed: bytes
    signed_sig: bytes
    one_time: tuple[OneTimePrekey, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": b64encode(self.identity),
            "signed": b64encode(self.signed),
            "signed_sig": b64encode(self.signed_sig),
            "one_time": [otk.to_json() for otk in self.one_time],
        }


def _object(name: str, value: object, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError("bad_field", f"{name} must be an object")
    extra = set(value) - allowed
    if extra:
        raise WireError("bad_field", f"{name} has unknown field(s): {', '.join(sorted(extra))}")
    missing = allowed - set(value)
    if missing:
        raise WireError("missing_field", f"{name} lacks {', '.join(sorted(missing))}")
    return value


def _one_time_prekey(name: str, value: object) -> OneTimePrekey:
    obj = _object(name, value, {"id", "key", "sig"})
    key_id = _uint(f"{name}.id", obj["id"])
    if key_id > 0xFFFFFFFF:
        raise WireError("bad_field", f"{name}.id must fit in 32 bits")
    return OneTimePrekey(
        key_id,
        b64decode(f"{name}.key", obj["key"], max_bytes=MAX_ONE_TIME_KEY_BYTES, min_bytes=1),
        b64decode(f"{name}.sig", obj["sig"], max_bytes=HYBRID_SIGNATURE_BYTES,
                  min_bytes=HYBRID_SIGNATURE_BYTES),
    )


def _bundle(max_one_time: int) -> Callable[[str, object], PrekeyBundle]:
    def check(name: str, value: object) -> PrekeyBundle:
        obj = _object(name, value, {"identity", "signed", "signed_sig", "one_time"})
        one_time = obj["one_time"]
        if not isinstance(one_time, list) or len(one_time) > max_one_time:
            raise WireError("bad_field", f"{name}.one_time must be a list of 0..{max_one_time}")
        keys = tuple(_one_time_prekey(f"{name}.one_time[{i}]", v) for i, v in enumerate(one_time))
        if len({k.key_id for k in keys}) != len(keys):
            raise WireError("bad_field", f"{name}.one_time has repeated ids")
        return PrekeyBundle(
            _exact_b64(HYBRID_PUBLIC_KEY_BYTES)(f"{name}.identity", obj["identity"]),
            _b64(MAX_SIGNED_PART_BYTES, 1)(f"{name}.signed", obj["signed"]),
            _exact_b64(HYBRID_SIGNATURE_BYTES)(f"{name}.signed_sig", obj["signed_sig"]),
            keys,
        )

    return check


# ---------------------------------------------------------------- frames


class Frame:
    """Base of every control frame: a typed record that knows its JSON shape."""

    TYPE: ClassVar[str]
    # field name -> checker(name, json value) -> python value
    SPEC: ClassVar[dict[str, Callable[[str, object], Any]]]
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"id"})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": self.TYPE}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            key = _WIRE_NAMES.get(f.name, f.name)
            if isinstance(value, bytes):
                value = b64encode(value)
            elif isinstance(value, PrekeyBundle):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    def encode(self) -> str:
        """The text frame to put on the websocket."""
        return json.dumps(self.to_json(), separators=(",", ":"))


# Python names that differ from their JSON keys ("from" is a keyword).
_WIRE_NAMES = {"sender": "from"}
_PY_NAMES = {v: k for k, v in _WIRE_NAMES.items()}


# Client -> relay


@dataclass(frozen=True)
class Auth(Frame):
    """Answer to ``hello``: sign :func:`relay.wire.auth.auth_message` with the identity key."""

    TYPE = "auth"
    handle: str
    identity: bytes
    relay: str
    sig: bytes
    SPEC = {
        "handle": check_handle,
        "identity": _exact_b64(HYBRID_PUBLIC_KEY_BYTES),
        "relay": _relay_id,
        "sig": _exact_b64(HYBRID_SIGNATURE_BYTES),
    }
    OPTIONAL = frozenset()


@dataclass(frozen=True)
class Send(Frame):
    """A sealed envelope for ``to``; ``msg`` is the sender's random message ID."""

    TYPE = "send"
    msg: str
    to: str
    body: bytes
    id: str | None = None
    SPEC = {"msg": check_msg_id, "to": check_handle, "body": _b64(MAX_ENVELOPE_BYTES, 1),
            "id": _req_id}

    def encode(self) -> str:
        # Hot path (one per envelope sent). Fields of the strict shapes need no JSON
        # escaping; anything else goes through the generic encoder, which escapes it (and
        # the relay refuses it). Tests check both give the same text.
        if (type(self.msg) is str and MSG_ID_RE.fullmatch(self.msg) is not None
                and type(self.to) is str and HANDLE_RE.fullmatch(self.to) is not None
                and type(self.body) is bytes):
            head = f'{{"v":1,"t":"send","msg":"{self.msg}","to":"{self.to}","body":"'
            if self.id is None:
                return f'{head}{b64encode(self.body)}"}}'
            if type(self.id) is str and _REQ_ID_RE.fullmatch(self.id) is not None:
                return f'{head}{b64encode(self.body)}","id":"{self.id}"}}'
        return super().encode()


@dataclass(frozen=True)
class SendGroup(Frame):
    """One sealed envelope for several recipients (a group message), uploaded once.

    The relay queues a copy for each recipient as an envelope of its own (durable, acked,
    redelivered like any other) whose message ID is :func:`fanout_msg_id` of ``msg`` and
    the recipient, so a resend of the same ``send_group`` is a duplicate for every copy.
    One ``stored_group`` answers it once every copy has settled.
    """

    TYPE = "send_group"
    msg: str
    to: tuple[str, ...]
    body: bytes
    id: str | None = None
    SPEC = {"msg": check_msg_id, "to": _handle_set(MAX_GROUP_RECIPIENTS),
            "body": _b64(MAX_ENVELOPE_BYTES, 1), "id": _req_id}


def fanout_msg_id(msg: str, recipient: str) -> str:
    """The message ID of ``recipient``'s copy of the group envelope ``msg``."""
    return hashlib.sha256(f"qsecret/v1/fanout\x00{msg}\x00{recipient}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Ack(Frame):
    """The recipient has what it was delivered: delete these ``seq`` from its queue."""

    TYPE = "ack"
    seqs: tuple[int, ...]
    SPEC = {"seqs": _uint_list(MAX_ACK_SEQS)}
    OPTIONAL = frozenset()

    def encode(self) -> str:
        # Hot path (a client acks as it reads: often one ack per deliver). Plain ints print
        # as the generic encoder prints them; anything else goes through it.
        seqs = self.seqs
        if all(type(seq) is int for seq in seqs):
            return '{"v":1,"t":"ack","seqs":[' + ",".join(map(str, seqs)) + "]}"
        return super().encode()


@dataclass(frozen=True)
class PrekeysUpload(Frame):
    """Publish (replace the signed part, add one-time prekeys to) the caller's bundle."""

    TYPE = "prekeys_upload"
    bundle: PrekeyBundle
    id: str | None = None
    SPEC = {"bundle": _bundle(MAX_ONE_TIME_PER_UPLOAD), "id": _req_id}


@dataclass(frozen=True)
class PrekeysFetch(Frame):
    """Ask for ``handle``'s bundle; consumes one of its one-time prekeys."""

    TYPE = "prekeys_fetch"
    handle: str
    id: str | None = None
    SPEC = {"handle": check_handle, "id": _req_id}


@dataclass(frozen=True)
class StreamOpen(Frame):
    """Open a bulk stream (binary frames) to ``to``; ``stream`` is 16 random bytes, hex.

    ``kind`` "file": durable at the relay (the peer may be offline; frames are spooled
    for it; re-opening with the same endpoints is idempotent). "media": live only.
    """

    TYPE = "stream_open"
    stream: str
    to: str
    kind: str
    id: str | None = None
    SPEC = {"stream": _stream, "to": check_handle, "kind": _choice(STREAM_KINDS), "id": _req_id}


@dataclass(frozen=True)
class StreamOpenGroup(Frame):
    """Open a durable file stream from the caller to several recipients (a group file).

    The caller uploads each binary frame once; the relay spools a copy for every
    recipient (each copy under that recipient's spool quota and TTL, delivered when it
    is online, deleted by its ``stream_ack``). Only the opener sends frames on it.
    Re-opening with the same recipients is idempotent; ``stream_ok`` answers.
    """

    TYPE = "stream_open_group"
    stream: str
    to: tuple[str, ...]
    id: str | None = None
    SPEC = {"stream": _stream, "to": _handle_set(MAX_GROUP_RECIPIENTS), "id": _req_id}


@dataclass(frozen=True)
class SpoolRewind(Frame):
    """Send me my spool again from its start: file frames this connection dropped unacked
    (e.g. of a group file whose offer it had not read yet) come again, in order."""

    TYPE = "spool_rewind"
    id: str | None = None
    SPEC = {"id": _req_id}


@dataclass(frozen=True)
class StreamClose(Frame):
    """Either end closes a stream; the relay tells the other end."""

    TYPE = "stream_close"
    stream: str
    SPEC = {"stream": _stream}
    OPTIONAL = frozenset()


@dataclass(frozen=True)
class StreamAck(Frame):
    """An endpoint of a file stream has durably handled these seqs: the relay deletes
    them from the spool it holds for that endpoint (seqs not spooled are ignored)."""

    TYPE = "stream_ack"
    stream: str
    seqs: tuple[int, ...]
    SPEC = {"stream": _stream, "seqs": _uint_list(MAX_ACK_SEQS)}
    OPTIONAL = frozenset()


@dataclass(frozen=True)
class Ping(Frame):
    """Application-level keepalive: counts as activity for the idle timeout."""

    TYPE = "ping"
    id: str | None = None
    SPEC = {"id": _req_id}


# Relay -> client


@dataclass(frozen=True)
class Hello(Frame):
    """First frame on every connection: who the relay is and the nonce to sign."""

    TYPE = "hello"
    relay: str
    nonce: bytes
    versions: tuple[int, ...]
    limits: dict[str, int]
    SPEC = {"relay": _relay_id, "nonce": _exact_b64(NONCE_BYTES), "versions": _uint_list(8),
            "limits": _int_map(32)}
    OPTIONAL = frozenset()


@dataclass(frozen=True)
class AuthOk(Frame):
    TYPE = "auth_ok"
    handle: str
    new: bool
    queued: int
    prekeys: int
    SPEC = {"handle": check_handle, "new": _bool, "queued": _uint, "prekeys": _uint}
    OPTIONAL = frozenset()


@dataclass(frozen=True)
class Error(Frame):
    """A refusal; ``id``/``msg``/``stream`` say which request, envelope or stream it is about."""

    TYPE = "error"
    code: str
    message: str
    id: str | None = None
    msg: str | None = None
    stream: str | None = None  # hex stream id: a binary frame or stream request was refused
    SPEC = {"code": _short_text(64), "message": _short_text(512), "id": _req_id,
            "msg": check_msg_id, "stream": _stream}
    OPTIONAL = frozenset({"id", "msg", "stream"})


@dataclass(frozen=True)
class Stored(Frame):
    """The envelope ``msg`` is durable at the relay (``dup``: it already was)."""

    TYPE = "stored"
    msg: str
    dup: bool
    id: str | None = None
    SPEC = {"msg": check_msg_id, "dup": _bool, "id": _req_id}

    def encode(self) -> str:
        # Hot path. Every field was validated on the way in (hex, bool, safe id chars),
        # so none needs JSON escaping; tests check this equals the generic encoding.
        dup = "true" if self.dup else "false"
        if self.id is None:
            return f'{{"v":1,"t":"stored","msg":"{self.msg}","dup":{dup}}}'
        return f'{{"v":1,"t":"stored","msg":"{self.msg}","dup":{dup},"id":"{self.id}"}}'


@dataclass(frozen=True)
class StoredGroup(Frame):
    """Every copy of the group envelope ``msg`` has settled: durable for every recipient
    but those in ``refused`` (handle and error code, e.g. ``quota_exceeded``)."""

    TYPE = "stored_group"
    msg: str
    refused: tuple[tuple[str, str], ...]
    id: str | None = None
    SPEC = {"msg": check_msg_id, "refused": _refusals(MAX_GROUP_RECIPIENTS), "id": _req_id}


@dataclass(frozen=True)
class StoredMany(Frame):
    """Several envelopes of this connection became durable in one commit (none a repeat).

    One frame per commit and connection instead of one ``stored`` per envelope: a
    busy sender gets one confirmation per commit, which halves the frames it reads.
    """

    TYPE = "stored_many"
    msgs: tuple[str, ...]
    SPEC = {"msgs": _msg_id_list(MAX_STORED_MSGS)}
    OPTIONAL = frozenset()

    def encode(self) -> str:
        # Hot path; message IDs are validated hex, so none needs JSON escaping.
        return '{"v":1,"t":"stored_many","msgs":["' + '","'.join(self.msgs) + '"]}'


@dataclass(frozen=True)
class Deliver(Frame):
    """An envelope for the connected user; ack ``seq`` once it is safely handled."""

    TYPE = "deliver"
    seq: int
    msg: str
    sender: str
    body: bytes
    ts: int
    SPEC = {"seq": _uint, "msg": check_msg_id, "from": check_handle,
            "body": _b64(MAX_ENVELOPE_BYTES, 1), "ts": _uint}
    OPTIONAL = frozenset()

    def encode(self) -> str:
        # Hot path; msg, sender and base64 need no JSON escaping (validated on input).
        return (f'{{"v":1,"t":"deliver","seq":{int(self.seq)},"msg":"{self.msg}",'
                f'"from":"{self.sender}","body":"{b64encode(self.body)}","ts":{int(self.ts)}}}')


@dataclass(frozen=True)
class PrekeysOk(Frame):
    TYPE = "prekeys_ok"
    stored: int
    id: str | None = None
    SPEC = {"stored": _uint, "id": _req_id}


@dataclass(frozen=True)
class Bundle(Frame):
    """A peer's bundle with at most one one-time prekey (none left: empty list)."""

    TYPE = "bundle"
    handle: str
    bundle: PrekeyBundle
    remaining: int
    id: str | None = None
    SPEC = {"handle": check_handle, "bundle": _bundle(1), "remaining": _uint, "id": _req_id}


@dataclass(frozen=True)
class PrekeysLow(Frame):
    """Sent to a bundle's owner when its one-time prekeys run low: upload more."""

    TYPE = "prekeys_low"
    remaining: int
    SPEC = {"remaining": _uint}
    OPTIONAL = frozenset()


@dataclass(frozen=True)
class StreamOk(Frame):
    TYPE = "stream_ok"
    stream: str
    id: str | None = None
    SPEC = {"stream": _stream, "id": _req_id}


@dataclass(frozen=True)
class StreamIncoming(Frame):
    """Someone opened a stream to you; its binary frames follow."""

    TYPE = "stream_incoming"
    stream: str
    sender: str
    kind: str
    SPEC = {"stream": _stream, "from": check_handle, "kind": _choice(STREAM_KINDS)}
    OPTIONAL = frozenset()


@dataclass(frozen=True)
class Pong(Frame):
    TYPE = "pong"
    id: str | None = None
    SPEC = {"id": _req_id}


CLIENT_FRAMES: dict[str, type[Frame]] = {
    cls.TYPE: cls for cls in (Auth, Send, SendGroup, Ack, PrekeysUpload, PrekeysFetch,
                              StreamOpen, StreamOpenGroup, StreamClose, StreamAck, SpoolRewind,
                              Ping)
}
SERVER_FRAMES: dict[str, type[Frame]] = {
    cls.TYPE: cls for cls in (Hello, AuthOk, Error, Stored, StoredMany, StoredGroup, Deliver,
                              PrekeysOk,
                              Bundle,
                              PrekeysLow, StreamOk, StreamIncoming, StreamClose, Pong)
}


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: a deeply nested document is refused, never crashes the reader.
        raise WireError("bad_json", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise WireError("bad_json", "frame must be a JSON object")
    return obj


def _parse(text: str | bytes, table: dict[str, type[Frame]]) -> Frame:
    obj = _load(text)
    try:
        return _build(obj, table)
    except WireError as exc:
        # Tie the refusal to its request, so the sender's pending request fails at once.
        req_id = obj.get("id")
        if isinstance(req_id, str) and _REQ_ID_RE.fullmatch(req_id):
            exc.req_id = req_id
        raise


def _build(obj: dict[str, Any], table: dict[str, type[Frame]]) -> Frame:
    version = obj.get("v")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise WireError(
            "bad_version",
            f"unsupported protocol version {version!r}; supported: "
            + ", ".join(map(str, SUPPORTED_VERSIONS)),
        )
    kind = obj.get("t")
    cls = table.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError("unknown_type", f"unknown frame type {str(kind)[:32]!r}")
    spec = cls.SPEC
    values: dict[str, Any] = {}
    for key, value in obj.items():
        if key in ("v", "t"):
            continue
        check = spec.get(key)
        if check is None:
            raise WireError("bad_field", f"{cls.TYPE}: unknown field {key[:32]!r}")
        values[_PY_NAMES.get(key, key)] = check(key, value)
    for key in spec:
        if key not in obj and key not in cls.OPTIONAL:
            raise WireError("missing_field", f"{cls.TYPE}: missing field {key!r}")
    return cls(**values)


# The one spelling of ``send`` that Frame.encode and ordinary clients produce. Its
# character classes are exactly what the field checkers allow (and need no JSON
# escapes), so a match means the generic parser would accept it with these values.
_FAST_SEND = re.compile(
    r'\{"v":1,"t":"send","msg":"([0-9a-f]{32})","to":"([a-z0-9][a-z0-9._-]{0,31})",'
    r'"body":"([A-Za-z0-9+/=]*)"(?:,"id":"([A-Za-z0-9._:-]{1,64})")?\}'
)
_send_body = _b64(MAX_ENVELOPE_BYTES, 1)
_SEQ = r"(?:0|[1-9][0-9]{0,15})"  # a JSON integer (no leading zeros); range checked after
_FAST_ACK = re.compile(r'\{"v":1,"t":"ack","seqs":\[(' + _SEQ + "(?:," + _SEQ + r")*)\]\}")
_ack_seqs = _uint_list(MAX_ACK_SEQS)


def parse_client_frame(text: str | bytes) -> Frame:
    """Validate a text frame a client sent; raise :class:`WireError` on any violation."""
    if type(text) is str:
        # Hot path: the relay parses one send per envelope. Anything else, or any doubt,
        # goes through the generic parser (which also words the errors).
        match = _FAST_SEND.fullmatch(text)
        if match is not None:
            msg, to, body, req_id = match.groups()
            return Send(msg, to, _send_body("body", body), req_id)
        match = _FAST_ACK.fullmatch(text)
        if match is not None:
            return Ack(_ack_seqs("seqs", [int(seq) for seq in match.group(1).split(",")]))
    return _parse(text, CLIENT_FRAMES)


# The spelling of ``deliver`` that Deliver.encode produces (what the relay sends), in
# three parts: the fields before the body and the one after it, with the character
# classes the field checkers allow, and the body between them, which holds no quote and
# no backslash (so no JSON escapes) and must decode as strict base64. Such a frame is one
# the generic parser would accept with these values (the numbers' range is checked
# after); anything else, or a refusal, goes to the generic parser. The body is not
# scanned by a regex: for a turn message that costs as much as decoding it, which checks
# it anyway.
_DELIVER_HEAD = re.compile(r'\{"v":1,"t":"deliver","seq":(' + _SEQ + r'),"msg":"([0-9a-f]{32})",'
                           r'"from":"([a-z0-9][a-z0-9._-]{0,31})","body":"')
_DELIVER_TAIL = re.compile(r'","ts":(' + _SEQ + r')\}')
_deliver_body = _b64(MAX_ENVELOPE_BYTES, 1)


def _fast_deliver(text: str) -> Deliver | None:
    head = _DELIVER_HEAD.match(text)
    if head is None:
        return None
    tail_at = text.rfind('","ts":')
    tail = _DELIVER_TAIL.fullmatch(text, tail_at) if tail_at >= head.end() else None
    if tail is None:
        return None
    body = text[head.end():tail_at]
    if '"' in body or "\\" in body:
        return None
    seq, msg, sender = head.groups()
    try:
        return Deliver(_uint("seq", int(seq)), msg, sender, _deliver_body("body", body),
                       _uint("ts", int(tail.group(1))))
    except WireError:
        return None  # refused by the generic parser, in its words


def parse_server_frame(text: str | bytes) -> Frame:
    """Validate a text frame the relay sent; raise :class:`WireError` on any violation."""
    if type(text) is str:
        # Hot path: a client parses one deliver per envelope it receives (49 per group
        # message in a 50-member group). Anything else goes through the generic parser.
        frame = _fast_deliver(text)
        if frame is not None:
            return frame
    return _parse(text, SERVER_FRAMES)
