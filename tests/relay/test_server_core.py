"""The relay's connection core without sockets: hello, login, limits, strikes, timeouts.

The client core (relay.wire.ClientConnection) and the server core
(relay.wire.server.ServerConnection) talk to each other in memory here.
"""

from __future__ import annotations

import json

from relay import wire
from relay.wire.server import (
    MAX_AUTH_FAILURES,
    BinaryRequest,
    ConnectionRules,
    LoginAttempt,
    Request,
    ServerConnection,
)
from tests.relay.harness import HYBRID, Identity

RELAY_ID = "qsr-core"
LIMITS = {"max_frame": wire.MAX_FRAME_BYTES, "rate": 5}
RULES = ConnectionRules(rate=5, burst=5, stream_rate=5, stream_burst=5, abuse_limit=4,
                        abuse_window=60, auth_timeout=10, idle_timeout=100)
ALICE = Identity("alice")
MSG = "0" * 32


def parse_all(texts: list[str]) -> list[wire.Frame]:
    return [wire.parse_server_frame(text) for text in texts]


def connect(now: float = 0.0, rules: ConnectionRules = RULES) -> ServerConnection:
    return ServerConnection(RELAY_ID, LIMITS, rules, now)


def log_in(server: ServerConnection, identity: Identity = ALICE) -> wire.ClientConnection:
    """Both cores, in memory; the signature is checked as the shell would."""
    client = wire.ClientConnection(identity.handle, identity.keypair.public_key, identity.sign,
                                   expected_relay_id=RELAY_ID)
    for text in server.data_to_send():
        client.receive(text)
    (auth,) = client.data_to_send()
    event = server.receive_text(auth)
    assert isinstance(event, LoginAttempt)
    HYBRID.verify(event.frame.identity, event.message, event.frame.sig)  # raises if wrong
    server.login_ok(event.frame, new=True, queued=0, prekeys=0)
    for text in server.data_to_send():
        client.receive(text)
    assert client.state == "ready"
    return client


def test_hello_announces_the_relay_its_limits_and_a_fresh_nonce() -> None:
    first, second = connect(), connect()
    (hello,) = parse_all(first.data_to_send())
    (other,) = parse_all(second.data_to_send())
    assert isinstance(hello, wire.Hello) and isinstance(other, wire.Hello)
    assert hello.relay == RELAY_ID and hello.limits == LIMITS
    assert hello.nonce != other.nonce


def test_login_then_requests_and_binary_frames_become_events() -> None:
    server = connect()
    client = log_in(server)
    assert server.handle == "alice" and server.identity == ALICE.keypair.public_key
    client.send("bob", b"sealed")
    (send,) = client.data_to_send()
    event = server.receive_text(send)
    assert isinstance(event, Request) and isinstance(event.frame, wire.Send)
    frame = wire.encode_binary(wire.KIND_FILE_CHUNK, bytes(16), 7, b"chunk")
    binary = server.receive_binary(frame)
    assert isinstance(binary, BinaryRequest)
    assert (binary.kind, binary.seq, binary.stream, binary.data) == (
        wire.KIND_FILE_CHUNK, 7, bytes(16), frame)
    assert server.data_to_send() == [] and server.close_code is None


def test_frames_before_login_are_refused_with_a_strike() -> None:
    server = connect()
    server.data_to_send()
    assert server.receive_text(wire.Ping("p1").encode()) is None
    assert server.receive_binary(wire.encode_binary(wire.KIND_MEDIA, bytes(16), 0, b"")) is None
    errors = parse_all(server.data_to_send())
    assert [e.code for e in errors] == ["not_authenticated", "not_authenticated"]
    assert server.take_refusals() == ["not_authenticated", "not_authenticated"]


def test_failed_logins_get_a_fresh_nonce_then_close_with_policy() -> None:
    server = connect()
    nonces = set()
    for attempt in range(MAX_AUTH_FAILURES):
        *errors, hello = parse_all(server.data_to_send())
        assert [e.code for e in errors] == (["auth_failed"] if attempt else [])
        assert isinstance(hello, wire.Hello)
        nonces.add(hello.nonce)
        client = wire.ClientConnection("alice", ALICE.keypair.public_key, ALICE.sign)
        client.receive(hello.encode())
        event = server.receive_text(client.data_to_send()[0])
        assert isinstance(event, LoginAttempt)
        close = server.login_failed("auth_failed", "signature did not verify")
        if attempt < MAX_AUTH_FAILURES - 1:
            assert close is None
    assert len(nonces) == MAX_AUTH_FAILURES
    (error,) = parse_all(server.data_to_send())  # no hello after the last failure
    assert isinstance(error, wire.Error) and error.code == "auth_failed"
    assert server.close_code == wire.CLOSE_POLICY and server.handle is None


def test_an_answer_to_the_wrong_relay_is_refused_here() -> None:
    server = connect()
    server.data_to_send()
    auth = wire.Auth("alice", ALICE.keypair.public_key, "qsr-other",
                     bytes(wire.HYBRID_SIGNATURE_BYTES))
    assert server.receive_text(auth.encode()) is None
    error, hello = parse_all(server.data_to_send())
    assert isinstance(error, wire.Error) and error.code == "wrong_relay"
    assert isinstance(hello, wire.Hello)


def test_a_second_login_is_refused() -> None:
    server = connect()
    log_in(server)
    auth = wire.Auth("alice", ALICE.keypair.public_key, RELAY_ID,
                     bytes(wire.HYBRID_SIGNATURE_BYTES))
    assert server.receive_text(auth.encode()) is None
    (error,) = parse_all(server.data_to_send())
    assert isinstance(error, wire.Error) and error.code == "already_authenticated"


def test_bad_frames_strike_until_the_connection_closes_with_policy() -> None:
    server = connect()
    log_in(server)
    for count in range(1, RULES.abuse_limit + 1):
        assert server.receive_text("{not json") is None
        expected = wire.CLOSE_POLICY if count == RULES.abuse_limit else None
        assert server.close_code == expected
    errors = parse_all(server.data_to_send())
    assert [e.code for e in errors] == ["bad_json"] * RULES.abuse_limit


def test_a_refused_request_names_its_request_id() -> None:
    server = connect()
    log_in(server)
    upload = json.loads(wire.PrekeysUpload(wire.PrekeyBundle(
        ALICE.keypair.public_key, b"s", bytes(wire.HYBRID_SIGNATURE_BYTES)), "up-7").encode())
    upload["bundle"]["signed"] = "A" * (4 * (wire.MAX_SIGNED_PART_BYTES // 3 + 2))
    assert server.receive_text(json.dumps(upload)) is None
    (error,) = parse_all(server.data_to_send())
    assert isinstance(error, wire.Error) and (error.code, error.id) == ("too_large", "up-7")


def test_refusals_without_a_strike_never_close() -> None:
    server = connect()
    log_in(server)
    for _ in range(RULES.abuse_limit * 2):
        assert server.refuse("quota_exceeded", "full", strike=False) is None
    assert server.close_code is None


def test_rate_limits_ask_the_shell_to_read_slower() -> None:
    server = connect()
    burst = int(RULES.burst)
    delays = [server.admit(False, 0.0) for _ in range(burst + 2)]
    assert delays[:burst] == [0.0] * burst
    assert delays[-1] > delays[-2] > 0
    assert server.admit(True, 0.0) == 0.0  # binary frames have their own bucket
    assert not server.try_admit(0.0)  # the fast path never borrows
    assert server.try_admit(10.0)


def test_timeouts_before_and_after_login() -> None:
    server = connect(now=0.0)
    assert server.check_timeouts(RULES.auth_timeout - 1) is None
    assert server.check_timeouts(RULES.auth_timeout + 1) == (wire.CLOSE_POLICY,
                                                               "authentication timeout")
    server = connect(now=0.0)
    log_in(server)
    server.admit(False, 50.0)
    assert server.check_timeouts(50.0 + RULES.idle_timeout - 1) is None
    assert server.check_timeouts(50.0 + RULES.idle_timeout + 1) == (wire.CLOSE_GOING_AWAY,
                                                                     "idle timeout")
