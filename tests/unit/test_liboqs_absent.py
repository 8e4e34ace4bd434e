"""With liboqs absent nothing may try to download or build it, and the process must live on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keysource.pq.liboqs_backend import locate_liboqs

TOOLS_THAT_WOULD_FETCH = ("git", "cmake", "ninja", "make", "curl", "wget")


def _sandbox_env(tmp_path: Path) -> dict[str, str]:
    """HOME and OQS_INSTALL_PATH point at empty dirs; git/cmake are tripwires that log any call."""
    home, install, bin_dir = tmp_path / "home", tmp_path / "oqs-empty", tmp_path / "bin"
    for d in (home, install, bin_dir):
        d.mkdir()
    tripwire_log = tmp_path / "tripwire.log"
    for tool in TOOLS_THAT_WOULD_FETCH:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tripwire_log}"\nexit 1\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OQS_", "PYOQS_", "QSECRET_"))}
    env.update(
        HOME=str(home),
        OQS_INSTALL_PATH=str(install),
        PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
        LD_LIBRARY_PATH="",
    )
    return env


def test_no_download_no_exit_when_liboqs_is_missing(tmp_path: Path) -> None:
    env = _sandbox_env(tmp_path)
    if locate_liboqs(env, Path(env["HOME"])).path is not None:
        pytest.skip("liboqs is installed system-wide here, so 'absent' cannot be arranged")
    program = (
        "import json, sys\n"
        "from keysource import pq\n"
        "from keysource.pq import BackendUnavailable, UnknownAlgorithm\n"
        "status = pq.backend_status('liboqs')\n"
        "kem = pq.get_kem('ML-KEM-768')\n"
        "try:\n"
        "    pq.get_kem('ML-KEM-768', 'liboqs')\n"
        "    forced = 'loaded'\n"
        "except BackendUnavailable as exc:\n"
        "    forced = str(exc)\n"
        "try:\n"
        "    pq.get_kem('FrodoKEM-976-AES')\n"
        "    frodo = 'loaded'\n"
        "except UnknownAlgorithm as exc:\n"
        "    frodo = str(exc)\n"
        "print(json.dumps({'available': status.available, 'detail': status.detail,\n"
        "    'kem_backend': kem.backend, 'forced': forced, 'frodo': frodo,\n"
        "    'oqs_imported': 'oqs' in sys.modules}))\n"
        "print('ALIVE')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "ALIVE", "the process must not exit early"
    report = json.loads(lines[-2])
    assert report == {
        "available": False,
        "detail": report["detail"],
        "kem_backend": "openssl",
        "forced": f"backend liboqs is unavailable: {report['detail']}",
        "frodo": report["frodo"],
        "oqs_imported": False,
    }
    assert "not found" in report["detail"]
    assert "liboqs" in report["frodo"]
    assert not (tmp_path / "tripwire.log").exists(), (tmp_path / "tripwire.log").read_text()


def test_doctor_reports_missing_liboqs_and_exits_zero(tmp_path: Path) -> None:
    env = _sandbox_env(tmp_path)
    if locate_liboqs(env, Path(env["HOME"])).path is not None:
        pytest.skip("liboqs is installed system-wide here, so 'absent' cannot be arranged")
    result = subprocess.run(
        [sys.executable, "-m", "client", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "ok  backend openssl" in result.stdout
    assert "--  backend liboqs: liboqs shared library not found" in result.stdout
    assert not (tmp_path / "tripwire.log").exists()


def test_locate_finds_a_library_in_oqs_install_path(tmp_path: Path) -> None:
    """Detection looks in $OQS_INSTALL_PATH/lib and proves the file loads before trusting it."""
    from cryptography.hazmat.bindings import _rust

    lib = tmp_path / "good" / "lib"
    lib.mkdir(parents=True)
    # Any loadable shared object named liboqs.so: only the search logic is under test here.
    (lib / "liboqs.so").symlink_to(_rust.__file__)
    found = locate_liboqs({"OQS_INSTALL_PATH": str(tmp_path / "good")}, tmp_path)
    assert found.path == lib / "liboqs.so"

    broken = tmp_path / "broken" / "lib"
    broken.mkdir(parents=True)
    (broken / "liboqs.so").write_bytes(b"not an ELF file")
    located = locate_liboqs({"OQS_INSTALL_PATH": str(tmp_path / "broken")}, tmp_path)
    if located.path is not None:
        pytest.skip("a system-wide liboqs is installed, so the broken file is bypassed")
    assert "present but not loadable" in located.reason


def test_locate_runs_no_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every client looks for liboqs when it first signs (its login): ctypes.util.find_library
    would run ldconfig, gcc and ld each time liboqs is absent."""
    import subprocess

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"locate_liboqs ran a program: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "popen", refuse)
    located = locate_liboqs({"OQS_INSTALL_PATH": str(tmp_path / "none")}, tmp_path)
    if located.path is None:
        assert "not found" in located.reason
