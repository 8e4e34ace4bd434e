"""Who can read the relay's /metrics: nobody on the websocket port unless a token is set.

Real relay processes on loopback. An operator who exposes the relay (directly or behind a
proxy) does not expose its metrics: they are served on the separate --metrics-listen address,
or on the websocket port only with the bearer token of --metrics-token /
$QSECRET_RELAY_METRICS_TOKEN. /healthz answers on the websocket port in every case.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

from tests.relay.harness import ROOT, start_relay

TOKEN = "s3cret-metrics-token-0123456789"


def _get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_by_default_metrics_are_not_served_and_healthz_is(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", metrics=False)
    try:
        status, body, _ = _get(relay.http_url + "/metrics")
        assert status == 404 and "--metrics-token" in body and "qsecret_relay" not in body
        assert _get(relay.http_url + "/healthz")[:2] == (200, "ok\n")
        assert relay.metrics_url is None
        assert not any("relay metrics on" in line for line in relay.output)
    finally:
        assert relay.stop() == 0


async def test_a_metrics_listener_serves_them_and_the_public_port_does_not(
        tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "--metrics-listen", "0")  # bare port: loopback
    try:
        assert relay.metrics_url is not None
        assert relay.metrics_url.startswith("http://127.0.0.1:")
        status, body, headers = _get(relay.metrics_url + "/metrics")
        assert status == 200 and "# TYPE qsecret_relay_frames_in_total counter" in body
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert _get(relay.metrics_url + "/healthz")[:2] == (200, "ok\n")
        assert _get(relay.metrics_url + "/")[0] == 404
        with pytest.raises(websockets.InvalidStatus):  # never a websocket there
            await connect(relay.metrics_url.replace("http", "ws", 1) + "/metrics")
        status, body, _ = _get(relay.http_url + "/metrics")
        assert status == 404 and "qsecret_relay" not in body
        assert _get(relay.http_url + "/healthz")[:2] == (200, "ok\n")
    finally:
        assert relay.stop() == 0


def test_a_token_is_required_wherever_metrics_are_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QSECRET_RELAY_METRICS_TOKEN", TOKEN)
    relay = start_relay(tmp_path / "relay")
    try:
        assert relay.metrics_url is not None
        for base in (relay.http_url, relay.metrics_url):
            for token in (None, "wrong-token-0123456789", TOKEN[:-1], TOKEN + "x"):
                status, body, headers = _get(base + "/metrics", token)
                assert status == 401 and "qsecret_relay" not in body, (base, token)
                assert headers["WWW-Authenticate"].startswith("Bearer")
            status, body, _ = _get(base + "/metrics", TOKEN)
            assert status == 200 and "qsecret_relay_connections" in body
            assert _get(base + "/healthz")[:2] == (200, "ok\n")
        assert TOKEN not in "".join(relay.output)
    finally:
        assert relay.stop() == 0


def test_the_token_flag_works_like_the_variable(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QSECRET_RELAY_METRICS_TOKEN", raising=False)
    relay = start_relay(tmp_path / "relay", "--metrics-token", TOKEN, metrics=False)
    try:
        assert _get(relay.http_url + "/metrics")[0] == 401
        assert _get(relay.http_url + "/metrics", TOKEN)[0] == 200
    finally:
        assert relay.stop() == 0


@pytest.mark.parametrize(("flags", "message"), [
    (["--metrics-token", "short"], "at least 16 characters"),
    (["--metrics-token", "has a space in it 0123"], "printable ASCII without spaces"),
    (["--metrics-listen", "localhost:http"], "is not [HOST:]PORT"),
    (["--metrics-listen", "127.0.0.1:70000"], "is not [HOST:]PORT"),
])
def test_bad_metrics_settings_are_refused_before_starting(
        tmp_path: Path, flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "--port", "0", "--data", str(tmp_path), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "relay listening" not in result.stdout
