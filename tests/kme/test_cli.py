"""The ``qsecret kme`` commands as a user runs them: help, PKI, plain-HTTP guard, status, curl."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from keysource.kme.client import SaeClient
from keysource.kme.runtime import SAE_A, SAE_B

from .conftest import Pair, qsecret_cmd, start_kme


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(qsecret_cmd("kme", *args), capture_output=True, text=True,
                          timeout=timeout)


def test_help_explains_each_command() -> None:
    top = run("--help")
    assert top.returncode == 0
    for word in ("pair", "serve", "status", "pki"):
        assert word in top.stdout
    pair = run("pair", "--help").stdout
    assert "curl" in pair and "--port-a" in pair and "--km" in pair and "--eve-fraction" in pair
    serve = run("serve", "--help").stdout
    assert "--role" in serve and "--link-host" in serve and "--peer-url" in serve
    assert "--redelivery-grace" in pair and "--redelivery-grace" in serve
    assert "--lanes" in pair and "--lanes" not in serve  # pair mode only (qkd/lanes.py)


def test_pki_init_and_issue_sae(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    first = run("pki", "init", "--dir", str(pki_dir), "--sae", "sae-x", "--hostname", "kme.lan")
    assert first.returncode == 0, first.stderr
    assert (pki_dir / "ca.pem").exists() and (pki_dir / "sae" / "sae-x.key").exists()
    assert (pki_dir / "kme" / "kme-alice.pem").exists() and (pki_dir / "link.psk").exists()
    assert (pki_dir / "sae" / "sae-x.key").stat().st_mode & 0o077 == 0
    listed = first.stdout.splitlines()  # every file it wrote, private keys too
    assert f"created {pki_dir / 'sae' / 'sae-x.key'}" in listed
    assert f"created {pki_dir / 'kme' / 'kme-alice.key'}" in listed
    again = run("pki", "init", "--dir", str(pki_dir), "--sae", "sae-x")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    issued = run("pki", "issue-sae", "sae-y", "--dir", str(pki_dir))
    assert issued.returncode == 0 and (pki_dir / "sae" / "sae-y.pem").exists()
    dup = run("pki", "issue-sae", "sae-y", "--dir", str(pki_dir))
    assert dup.returncode == 2 and "already" in dup.stderr
    bad = run("pki", "issue-sae", "no/slashes", "--dir", str(pki_dir))
    assert bad.returncode == 2 and "invalid SAE_ID" in bad.stderr
    missing = run("pki", "issue-sae", "sae-z", "--dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no CA" in missing.stderr


def test_plain_http_refuses_non_loopback(tmp_path: Path) -> None:
    result = run("pair", "--data", str(tmp_path), "--link", "none", "--plain-http",
                 "--host", "0.0.0.0", "--port-a", "0", "--port-b", "0")
    assert result.returncode == 2
    assert "loopback only" in result.stderr


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_redelivery_grace_is_refused_clearly(tmp_path: Path, value: str) -> None:
    result = run("pair", "--data", str(tmp_path), "--link", "none", "--port-a", "0",
                 "--port-b", "0", "--redelivery-grace", value)
    assert result.returncode == 2
    assert "--redelivery-grace must be >= 0" in result.stderr
    assert not (tmp_path / "pki").exists()  # refused before anything was created


@pytest.mark.parametrize(("extra", "message"), [
    (("--lanes", "0"), "--lanes must be in [1, 64] (got 0)"),
    (("--lanes", "65"), "--lanes must be in [1, 64] (got 65)"),
    (("--lanes", "2", "--link", "none"), "--lanes needs the emulated link"),
])
def test_a_bad_lane_count_is_refused_clearly(tmp_path: Path, extra: tuple[str, ...],
                                             message: str) -> None:
    result = run("pair", "--data", str(tmp_path), "--port-a", "0", "--port-b", "0", *extra)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "pki").exists()  # refused before anything was created


def test_plain_http_on_loopback_warns_and_serves(tmp_path: Path) -> None:
    kme = start_kme(["pair", "--data", str(tmp_path), "--link", "none", "--plain-http",
                     "--port-a", "0", "--port-b", "0", "--status-interval", "0"], ready_count=2)
    try:
        assert any(line.startswith("WARNING: plain HTTP") for line in kme.lines)
        pair = Pair(tmp_path, kme)
        pair.fill(1)
        with SaeClient(pair.url_a, sae_id=SAE_A) as alice, \
                SaeClient(pair.url_b, sae_id=SAE_B) as bob:
            (sent,) = alice.get_enc_keys(SAE_B, number=1)
            assert bob.get_dec_keys(SAE_A, [sent.key_ID]) == [sent]
    finally:
        kme.stop()


def test_status_command_reads_a_running_kme(pair: Pair) -> None:
    pair.fill(3)
    result = run("status", "--url", pair.url_a, "--data", str(pair.data))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("kme-alice (allocator, peer kme-bob): pool ")
    as_json = run("status", "--url", pair.url_b, "--data", str(pair.data), "--sae", SAE_B,
                  "--json")
    stats = json.loads(as_json.stdout)
    assert stats["pool"]["KME_ID"] == "kme-bob" and stats["pool"]["stored"] >= 3
    assert "key_material" not in as_json.stdout and "material" not in as_json.stdout
    down = run("status", "--url", "https://127.0.0.1:1", "--data", str(pair.data))
    assert down.returncode == 2 and "cannot read" in down.stderr
    port_b = pair.url_b.rstrip("/").rsplit(":", 1)[1]  # --port, as 'kme serve' takes it
    by_port = run("status", "--port", port_b, "--data", str(pair.data), "--sae", SAE_B)
    assert by_port.returncode == 0, by_port.stderr
    assert by_port.stdout.startswith("kme-bob ")
    both = run("status", "--port", port_b, "--url", pair.url_b, "--data", str(pair.data))
    assert both.returncode == 2 and "not allowed with" in both.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_fetches_keys_over_mtls(pair: Pair) -> None:
    pair.fill(2)
    pki = pair.pki
    a, b = pki.sae(SAE_A), pki.sae(SAE_B)

    def curl(url: str, cert: Path, key: Path) -> dict[str, object]:
        out = subprocess.run(
            ["curl", "-sS", "--fail-with-body", "--cacert", str(pki.ca_cert),
             "--cert", str(cert), "--key", str(key), url],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr + out.stdout
        return json.loads(out.stdout)

    sent = curl(f"{pair.url_a}/api/v1/keys/{SAE_B}/enc_keys?number=1", a.cert, a.key)
    (key,) = sent["keys"]  # type: ignore[misc]
    got = curl(f"{pair.url_b}/api/v1/keys/{SAE_A}/dec_keys?key_ID={key['key_ID']}",
               b.cert, b.key)
    assert got == sent
    no_cert = subprocess.run(
        ["curl", "-sS", "--cacert", str(pki.ca_cert), f"{pair.url_a}/api/v1/keys/{SAE_B}/status"],
        capture_output=True, text=True, timeout=30,
    )
    assert "client certificate" in no_cert.stdout


def test_ctrl_c_stops_a_pair_with_lanes_cleanly(tmp_path: Path) -> None:
    """Ctrl+C in a terminal signals the whole process group, lane processes too: the KME
    stops them itself, so nothing is left running and no lane prints a traceback."""
    import os
    import signal
    import time

    log = tmp_path / "kme.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            qsecret_cmd("kme", "pair", "--data", str(tmp_path / "kme"), "--port-a", "0",
                        "--port-b", "0", "--lanes", "2", "--frame-bits", "32768",
                        "--status-interval", "0.5"),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "blocks" not in log.read_text() or " blocks 0 " in log.read_text().splitlines()[-1]:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl+C does
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    for _ in range(100):  # lanes and multiprocessing's resource tracker follow it out
        group = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True,
                               text=True).stdout.split()
        if not group:
            break
        time.sleep(0.1)
    assert not group, f"processes outlived the KME: {group}"
