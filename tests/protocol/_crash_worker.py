"""Child process for the crash test: sends through the store like the client's I/O layer.

    python -m tests.protocol._crash_worker STORE NETWORK send TEXT KILL_POINT
    python -m tests.protocol._crash_worker STORE NETWORK recover TEXT -

``send`` encrypts TEXT, commits (state + outbox), "transmits" (appends the wire to the
NETWORK file, fsynced) and marks it sent, printing ``AT <point>`` and waiting to be
SIGKILLed at KILL_POINT (after-encrypt, after-commit, after-send). ``recover`` resends the
outbox, then sends TEXT.
"""

from __future__ import annotations

import os
import sys
import time

import nacl.pwhash

from client.store import Store

PASSPHRASE = "correct horse battery staple"
PEER = "bob"


def transmit(network: str, wire: bytes) -> None:
    with open(network, "ab") as out:
        out.write(len(wire).to_bytes(4, "big") + wire)
        out.flush()
        os.fsync(out.fileno())


def pause(point: str, kill_point: str) -> None:
    if point == kill_point:
        print(f"AT {point}", flush=True)
        time.sleep(60)  # the parent kills us here
        raise SystemExit("was not killed")


def send(store: Store, network: str, text: bytes, kill_point: str) -> None:
    session = store.load_session(PEER)
    assert session is not None
    out = session.encrypt(text)
    pause("after-encrypt", kill_point)
    outbox_id = store.commit_outgoing(PEER, session, out, text)
    pause("after-commit", kill_point)
    transmit(network, out.wire)
    pause("after-send", kill_point)
    store.mark_sent(outbox_id)


def main() -> int:
    path, network, mode, text, kill_point = sys.argv[1:6]
    with Store.open(PASSPHRASE, path, opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
                    memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN) as store:
        if mode == "recover":
            for entry in store.outbox():
                transmit(network, entry.wire)
                store.mark_sent(entry.id)
        send(store, network, text.encode(), kill_point)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
