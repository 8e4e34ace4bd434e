"""``qsecret call`` and ``qsecret answer``: voice calls from a shell, headless and scripted.

Sound comes from ``--in FILE`` (any audio file PyAV reads), ``--tone HZ``, ``--mute`` or the
microphone, and goes to ``--out FILE.wav`` or the speaker. ``--json`` prints one JSON object
per call event and, at the end, the call's statistics and key sources.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from client.messenger.api import CallEvent, CallState, CallView, MessengerError

from .errors import EXIT_INTERRUPTED, EXIT_NOT_DONE, EXIT_OK, CliError
from .session import go_online, open_messenger

TAIL_S = 1.0  # after the --in file was sent: time for the far side to play it out
FULL_SOURCES = "QKD+"


def run_call(args: argparse.Namespace) -> int:
    source, sink = _audio(args)
    return _run(args, source, sink, caller=True)


def run_answer(args: argparse.Namespace) -> int:
    source, sink = _audio(args)
    return _run(args, source, sink, caller=False)


def _audio(args: argparse.Namespace) -> tuple[Any, Any]:
    """The source and sink the options ask for; a missing sound device is a clear error for
    the microphone, and only a warning for the speaker when the input is headless."""
    from client.call import audio

    if args.input is not None:
        source: Any = audio.FileSource(args.input)
    elif args.tone is not None:
        source = audio.ToneSource(args.tone)
    elif args.mute:
        source = audio.SilenceSource()
    else:
        source = audio.MicrophoneSource()
    if args.out is not None:
        return source, audio.WavSink(args.out)
    try:
        return source, audio.SpeakerSink()
    except audio.AudioError as exc:
        print(f"qsecret {args.command}: not playing the other side: {exc}", file=sys.stderr)
        return source, None


def _run(args: argparse.Namespace, source: Any, sink: Any, *, caller: bool) -> int:
    messenger = open_messenger(args)
    out = _Output(args)
    try:
        return asyncio.run(_session(messenger, args, source, sink, caller, out))
    except KeyboardInterrupt:  # the call was hung up on the way out (messenger.stop)
        return EXIT_INTERRUPTED
    finally:
        source.close()
        if sink is not None:
            sink.close()


async def _session(messenger: Any, args: argparse.Namespace, source: Any, sink: Any,
                   caller: bool, out: _Output) -> int:
    changes: asyncio.Queue[CallView] = asyncio.Queue()
    messenger.subscribe(
        lambda e: changes.put_nowait(e.call) if isinstance(e, CallEvent) else None)
    await go_online(messenger, args.timeout if caller else 30.0)
    view: CallView | None = None
    try:
        if caller:
            view = await messenger.place_call(args.handle, source, sink,
                                              rekey_every=args.rekey_every)
            out.event("calling", view, f"calling {args.handle}...")
        else:
            out.event("waiting", None, "waiting for a call...")
            view = await _next_ringing(changes, args.timeout, out)
            out.event("ringing", view, f"{view.peer} is calling: answering")
            view = await messenger.answer_call(view.call_id, source, sink)
        if view.state is not CallState.ENDED:
            view = await _until_answered(messenger, changes, view, out)
        if view.state is CallState.ACTIVE:
            view = await _talk(messenger, args, view, out)
    finally:
        await messenger.stop()  # a call still live is hung up here
        if view is not None:  # also after Ctrl+C, which hung it up on the way out
            if view.state is not CallState.ENDED or view.reason != "offline":
                view = messenger.calls.view(view.call_id)
            out.summary(view)
    return EXIT_OK if view.answered_at is not None else EXIT_NOT_DONE


async def _next_ringing(changes: asyncio.Queue[CallView], timeout: float,
                        out: _Output) -> CallView:
    """The next incoming call that rings (one refused, from a stranger, is only reported)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            view = await asyncio.wait_for(changes.get(), deadline - time.monotonic())
        except TimeoutError:
            raise CliError(f"no call came within {timeout:.0f}s") from None
        if not view.outgoing and view.state is CallState.RINGING:
            return view
        if not view.outgoing and view.state is CallState.ENDED and view.answered_at is None:
            out.event("refused", view, f"refused a call from {view.peer}: {view.reason}")


async def _until_answered(messenger: Any, changes: asyncio.Queue[CallView], view: CallView,
                          out: _Output) -> CallView:
    """Until the call is active or over (the signalling's ring time-out bounds it)."""
    rang = False
    while True:
        view = messenger.calls.view(view.call_id)
        if view.state in (CallState.ACTIVE, CallState.ENDED):
            return view
        if view.state is CallState.RINGING and not rang:
            rang = True
            out.event("ringing", view, f"ringing at {view.peer}...")
        await changes.get()


async def _talk(messenger: Any, args: argparse.Namespace, view: CallView,
                out: _Output) -> CallView:
    """The call is up: until a side hangs up, --duration passes or the --in file ends."""
    out.event("connected", view, f"connected to {view.peer}; keys: {view.sources}")
    calls = messenger.calls
    file_ends = args.input is not None and args.duration is None
    view = await calls.wait(view.call_id, source_done=file_ends, timeout=args.duration)
    if view.state is not CallState.ENDED and file_ends:
        view = await calls.wait(view.call_id, timeout=TAIL_S)
    if view.state is not CallState.ENDED:
        try:
            view = await messenger.hang_up(view.call_id)
        except MessengerError:  # ended meanwhile
            view = calls.view(view.call_id)
    return view


class _Output:
    """Human lines, or one JSON object per event with --json."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = args.json

    def event(self, name: str, view: CallView | None, text: str) -> None:
        if self.json:
            record: dict[str, Any] = {"event": name}
            if view is not None:
                record.update({"call_id": view.call_id, "peer": view.peer,
                               "sources": view.sources})
            print(json.dumps(record), flush=True)
        else:
            print(text, flush=True)

    def summary(self, view: CallView) -> None:
        duration = time.time() - view.answered_at if view.answered_at else 0.0
        if self.json:
            print(json.dumps({
                "event": "ended", "call_id": view.call_id, "peer": view.peer,
                "outgoing": view.outgoing, "reason": view.reason,
                "ended_by_peer": view.ended_by_peer, "answered": view.answered_at is not None,
                "sources": view.sources,
                "degraded": bool(view.sources) and not view.sources.startswith(FULL_SOURCES),
                "duration_s": round(duration, 2), "rekeys": view.rekeys, "stats": view.stats,
            }), flush=True)
            return
        who = view.peer if view.ended_by_peer else "you"
        if view.reason == "offline":
            print(f"{view.peer} is offline: a missed call waits for them", flush=True)
        elif view.answered_at is None:
            print(f"call not answered: {view.reason}", flush=True)
        else:
            stats = view.stats
            print(f"call ended ({view.reason}, by {who}) after {duration:.1f}s; keys: "
                  f"{view.sources}, {view.rekeys} rekey(s); loss {stats.get('loss', 0):.1%}, "
                  f"jitter {stats.get('jitter_ms', 0)} ms, media round trip "
                  f"{stats.get('media_round_trip_ms', '-')} ms, refused frames "
                  f"{stats.get('refused_total', 0)}", flush=True)
