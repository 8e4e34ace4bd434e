"""One SAE_ID rule (keysource/kme/sae_id.py) for the KME's requests, its PKI names, the
messenger's peers and its own config: each caller accepts and refuses exactly the same values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.protocol.bundle import check_peer_sae_id
from client.protocol.errors import MalformedMessage
from keysource.kme import etsi
from keysource.kme.pki import PkiError, check_identity
from keysource.kme.sae_id import (
    InvalidSaeId,
    check_sae_id,
    is_valid_sae_id,
    sae_id_path_segment,
)

GOOD = ["sae-alice", "SAE_B", "a", "a" * 64, "x.y-z_0", "0sae"]
BAD = {
    "": "empty",
    "a" * 65: "65 characters, more than 64",
    "sae-a\n": "control characters",
    "sae\x00a": "control characters",
    "sae\x1b[1m": "control characters",
    "sae\x85a": "control characters",
    "../x": "not 1-64",
    "a/b": "not 1-64",
    "%2e%2e": "not 1-64",
    "-sae": "not 1-64",
    "sae a": "not 1-64",
    "säe": "not 1-64",
}


def _verdicts(value: str) -> set[bool]:
    """Whether each caller accepts ``value``."""
    results = {is_valid_sae_id(value)}
    for call, error in ((lambda: etsi.check_sae_id(value), etsi.BadRequest),
                        (lambda: check_identity(value, "SAE_ID"), PkiError),
                        (lambda: check_peer_sae_id(value, "bundle"), MalformedMessage),
                        (lambda: sae_id_path_segment(value), InvalidSaeId)):
        try:
            call()
            results.add(True)
        except error:
            results.add(False)
    return results


@pytest.mark.parametrize("value", GOOD)
def test_good_values_pass_everywhere_and_need_no_escaping(value: str) -> None:
    assert _verdicts(value) == {True}
    assert sae_id_path_segment(value) == value


@pytest.mark.parametrize("value", sorted(BAD))
def test_bad_values_are_refused_everywhere_with_the_reason(value: str) -> None:
    assert _verdicts(value) == {False}
    with pytest.raises(InvalidSaeId, match=BAD[value]):
        check_sae_id(value)


@given(st.text(max_size=80))
def test_every_caller_agrees_on_any_text(value: str) -> None:
    assert len(_verdicts(value)) == 1


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidSaeId, match="not a string"):
        check_sae_id(7)
