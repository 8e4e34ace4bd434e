"""Property tests: two conversations under random sends, drops, duplicates, reorders and
misdeliveries. Every delivered message decrypts exactly once, in its own conversation and
direction; nothing decrypts twice; a misdelivered or replayed message never decrypts.

Network model (the relay's): messages may be reordered, duplicated and misdelivered at any
time; ordinary messages may be lost for good; a lost *turn* message is resent by the
sender's outbox at the end (it carries the KEM ciphertext the rest of its chain needs).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.protocol import Message, ProtocolError, QkdKeys, RatchetConfig
from client.protocol.ratchet import T_TURN

from .helpers import pair, send

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 1), st.integers(0, 1)),
        st.tuples(st.just("burst"), st.integers(0, 1), st.integers(0, 1)),
        st.tuples(st.just("replay"), st.integers(0, 10_000), st.just(False)),
        st.tuples(st.just("deliver"), st.integers(0, 10_000), st.booleans()),
        st.tuples(st.just("drop"), st.integers(0, 10_000), st.just(False)),
        st.tuples(st.just("misdeliver"), st.integers(0, 10_000), st.just(False)),
    ),
    min_size=1,
    max_size=60,
)


class World:
    def __init__(self) -> None:
        config = RatchetConfig(refresh_interval=4)
        self.convs = []
        for _ in range(2):
            a, b, link = pair(config)
            self.convs.append(((a, b), link, {}))  # sessions, key link, QKD keys fetched per wire
        self.counter = 0
        self.in_flight: list[tuple[int, int, bytes, bytes]] = []  # conv, receiver, wire, text
        self.dropped_turns: list[tuple[int, int, bytes, bytes]] = []
        self.delivered: set[bytes] = set()
        self.history: list[tuple[int, int, bytes, bytes]] = []  # every delivered item
        self.decrypted: dict[bytes, int] = {}

    def send(self, conv: int, sender: int) -> None:
        sessions, link, _ = self.convs[conv]
        text = f"c{conv} s{sender} #{self.counter}".encode()
        self.counter += 1
        wire = send(sessions[sender], link, text)
        self.in_flight.append((conv, 1 - sender, wire, text))

    def deliver(self, item: tuple[int, int, bytes, bytes], *, to_conv: int | None = None) -> None:
        conv, receiver, wire, text = item
        target = conv if to_conv is None else to_conv
        sessions, link, held = self.convs[target]
        session = sessions[receiver]
        ids = session.qkd_needed(wire)
        keys = None
        if ids and target == conv:
            if wire not in held:
                held[wire] = link.dec_keys(ids)
            keys = held[wire]
        elif ids:  # misdelivered: the wrong KME cannot have these keys; try random ones
            keys = QkdKeys(ids, tuple(os.urandom(32) for _ in ids))
        if target == conv:
            self.delivered.add(text)
            self.history.append(item)
        try:
            events = session.decrypt(wire, keys)
        except ProtocolError:
            assert target != conv or text in self.decrypted, f"{text!r} refused on first delivery"
            return
        for event in events:
            if isinstance(event, Message):
                assert event.plaintext.startswith(f"c{target} s{1 - receiver} ".encode()), (
                    "decrypted in the wrong conversation or direction")
                self.decrypted[event.plaintext] = self.decrypted.get(event.plaintext, 0) + 1
                assert self.decrypted[event.plaintext] == 1, "decrypted twice"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS)
def test_random_interleavings_decrypt_every_delivered_message_exactly_once(actions) -> None:
    world = World()
    for kind, a, b in actions:
        if kind == "send":
            world.send(a, b)
        elif kind == "burst":
            for _ in range(3):
                world.send(a, b)
        elif kind == "replay":
            if world.history:
                world.deliver(world.history[a % len(world.history)])
        elif not world.in_flight:
            continue
        elif kind == "deliver":
            index = a % len(world.in_flight)
            item = world.in_flight[index] if b else world.in_flight.pop(index)
            world.deliver(item)
        elif kind == "drop":
            item = world.in_flight.pop(a % len(world.in_flight))
            if item[2][1] == T_TURN:
                world.dropped_turns.append(item)
        else:
            item = world.in_flight[a % len(world.in_flight)]
            world.deliver(item, to_conv=1 - item[0])
    # the outbox resends lost turn messages; whatever is still in flight arrives
    for item in world.dropped_turns + world.in_flight:
        world.deliver(item)
    missing = world.delivered - set(world.decrypted)
    assert not missing, f"delivered but never decrypted: {sorted(missing)}"
    assert set(world.decrypted) <= world.delivered
