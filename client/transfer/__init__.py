"""Encrypted file transfer: manifest, per-file keys, STREAM sealing, sender/receiver cores.

Sans-I/O towards the network; the receiver's disk side (``.part`` files, progress, landing)
is in ``partial``. The thin asyncio layer moves frames between these objects and the relay:

    sender:   built = build_manifest(paths); manifest = built.manifest.with_qkd_key_ids(ids)
              send encode_offer(manifest) in an E2EE message
              keys = TransferKeys(manifest, session_secret, qkd_bytes)
              tx = TransferSender(keys, FileReader.for_manifest(built))
              on a binary frame from the peer: tx.receive_control(frame), then send tx.frames()
              no ack for a while with tx.in_flight > 0: tx.retransmit(); persist tx.snapshot()
    receiver: msg = decode_message(payload)  (an offer) -> show name/size/sender, accept?
              (decline: send encode_decline(msg.transfer_id) in an E2EE message)
              keys = TransferKeys(msg.manifest, session_secret, qkd_bytes)
              rx = TransferReceiver.accept(keys, downloads)
              on each binary frame: rx.receive_frame(frame); send rx.data_to_send()
    restart:  for tid in TransferReceiver.pending(downloads):
                  m = TransferReceiver.stored_manifest(downloads, tid); keys = TransferKeys(m, ...)
                  rx = TransferReceiver.resume(keys, downloads)   (queues its resume point)
              tx = TransferSender.restore(snapshot, keys, FileReader(sources))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keysource.lazy import lazy_getattr

# Loaded on first use: 'qsecret send-file' imports only the manifest module to list the files
# at once, before the rest of the transfer machinery (and the messenger) load.
_HOME = {
    **dict.fromkeys([
        "TransferMessage", "decode_message", "encode_cancel", "encode_decline",
        "encode_group_offer", "encode_offer",
    ], ".control"),
    **dict.fromkeys([
        "ChunkRejected", "MalformedFrame", "ManifestError", "OutdatedOffer", "OutOfOrderChunk",
        "ReplayedChunk", "SourceError", "StateError", "TamperedChunk", "TransferError",
        "TruncatedStream", "UnsafeName",
    ], ".errors"),
    **dict.fromkeys([
        "Accepted", "Cancelled", "ChunkRefused", "ChunkStored", "ControlIgnored",
        "Declined", "Event", "FileDelivered", "FileLanded", "IntegrityFailed",
        "ProgressUpdate", "Rewound", "TransferComplete",
    ], ".events"),
    **dict.fromkeys([
        "TransferKeys",
    ], ".keys"),
    **dict.fromkeys([
        "DEFAULT_CHUNK_SIZE", "BuiltManifest", "FileEntry", "Manifest", "Skipped",
        "build_manifest",
    ], ".manifest"),
    **dict.fromkeys([
        "OnConflict", "safe_components",
    ], ".names"),
    **dict.fromkeys([
        "PartialStore",
    ], ".partial"),
    **dict.fromkeys([
        "Progress", "ProgressMeter",
    ], ".progress"),
    **dict.fromkeys([
        "ReceiverStatus", "TransferReceiver",
    ], ".receiver"),
    **dict.fromkeys([
        "FileReader", "SenderStatus", "TransferSender",
    ], ".sender"),
    **dict.fromkeys([
        "KIND_CHUNK", "KIND_CONTROL", "frame_kind",
    ], ".stream"),
    **dict.fromkeys([
        "OfferSummary", "count_files", "format_size", "summarise",
    ], ".summary"),
}

if TYPE_CHECKING:
    from .control import (
        TransferMessage,
        decode_message,
        encode_cancel,
        encode_decline,
        encode_group_offer,
        encode_offer,
    )
    from .errors import (
        ChunkRejected,
        MalformedFrame,
        ManifestError,
        OutdatedOffer,
        OutOfOrderChunk,
        ReplayedChunk,
        SourceError,
        StateError,
        TamperedChunk,
        TransferError,
        TruncatedStream,
        UnsafeName,
    )
    from .events import (
        Accepted,
        Cancelled,
        ChunkRefused,
        ChunkStored,
        ControlIgnored,
        Declined,
        Event,
        FileDelivered,
        FileLanded,
        IntegrityFailed,
        ProgressUpdate,
        Rewound,
        TransferComplete,
    )
    from .keys import TransferKeys
    from .manifest import (
        DEFAULT_CHUNK_SIZE,
        BuiltManifest,
        FileEntry,
        Manifest,
        Skipped,
        build_manifest,
    )
    from .names import OnConflict, safe_components
    from .partial import PartialStore
    from .progress import Progress, ProgressMeter
    from .receiver import ReceiverStatus, TransferReceiver
    from .sender import FileReader, SenderStatus, TransferSender
    from .stream import KIND_CHUNK, KIND_CONTROL, frame_kind
    from .summary import OfferSummary, count_files, format_size, summarise


__getattr__ = lazy_getattr(__name__, _HOME)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "KIND_CHUNK",
    "KIND_CONTROL",
    "Accepted",
    "BuiltManifest",
    "Cancelled",
    "ChunkRefused",
    "ChunkRejected",
    "ChunkStored",
    "ControlIgnored",
    "Declined",
    "Event",
    "FileDelivered",
    "FileEntry",
    "FileLanded",
    "FileReader",
    "IntegrityFailed",
    "MalformedFrame",
    "Manifest",
    "ManifestError",
    "OfferSummary",
    "OnConflict",
    "OutdatedOffer",
    "OutOfOrderChunk",
    "PartialStore",
    "Progress",
    "ProgressMeter",
    "ProgressUpdate",
    "ReceiverStatus",
    "ReplayedChunk",
    "Rewound",
    "SenderStatus",
    "Skipped",
    "SourceError",
    "StateError",
    "TamperedChunk",
    "TransferComplete",
    "TransferError",
    "TruncatedStream",
    "TransferKeys",
    "TransferMessage",
    "TransferReceiver",
    "TransferSender",
    "UnsafeName",
    "build_manifest",
    "count_files",
    "decode_message",
    "encode_cancel",
    "encode_decline",
    "encode_group_offer",
    "encode_offer",
    "format_size",
    "frame_kind",
    "safe_components",
    "summarise",
]
