"""The path a key took, as the KMEs tell their SAEs: ETSI GS QKD 014 ``key_extension``.

ETSI GS QKD 014 lets each key of a Key container carry a ``key_extension`` object. A qsecret
KME puts there the KMEs (network nodes) the key went through, the master SAE's first::

    {"key_ID": "...", "key": "...", "key_extension": {"qsecret_path": ["hf-5", "hf-1", "hf-7"]}}

One entry: both SAEs at one KME; two: the KMEs of one QKD link; more: relayed by the trusted
nodes in between. An SAE that does not know the extension ignores it (the field is allowed
by the standard). Both the server (:mod:`.etsi`) and the SAE client (:mod:`.client`) use
this module, so the name and the rule are written once; it imports nothing heavy, because
the messenger's start path imports the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .sae_id import is_valid_sae_id

PATH_EXTENSION = "qsecret_path"
MAX_PATH_NODES = 64  # far beyond any route the relay takes (a backbone is ~20 hops)


class BadKeyPath(ValueError):
    """A ``qsecret_path`` extension that is not a list of KME names."""


def key_extension(path: Sequence[str]) -> dict[str, Any] | None:
    """The ``key_extension`` object for a key that went along ``path`` (None: no path)."""
    return {PATH_EXTENSION: list(path)} if path else None


def path_of(item: Mapping[str, Any]) -> tuple[str, ...]:
    """The path a Key container entry names; () without one; BadKeyPath if it is malformed."""
    extension = item.get("key_extension")
    if extension is None:
        return ()
    if not isinstance(extension, Mapping):
        raise BadKeyPath("key_extension is not an object")
    raw = extension.get(PATH_EXTENSION)
    if raw is None:
        return ()
    if (not isinstance(raw, list) or not 0 < len(raw) <= MAX_PATH_NODES
            or not all(is_valid_sae_id(node) for node in raw)):
        raise BadKeyPath(f"{PATH_EXTENSION} is not a list of 1-{MAX_PATH_NODES} KME names")
    return tuple(raw)
