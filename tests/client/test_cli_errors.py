"""Every failure a user can act on is one line on standard error and a non-zero exit status
(client/cli/errors.py), from every command path, against a real relay."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.cli.entry import run
from client.cli.errors import (
    EXIT_FAILED,
    EXIT_NOT_DONE,
    EXIT_STATUS_OF,
    USER_ERRORS,
    CliError,
)
from tests.e2e.stack import Stack, free_port, one_line_failure, relay_with_alice


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with relay_with_alice(tmp_path_factory.mktemp("cli-errors")) as stack:
        yield stack



def test_a_recv_with_nothing_to_show_says_the_login_worked(relay: Stack) -> None:
    """A new user's first ``recv`` publishes the prekeys: it says so (on stderr; stdout is
    for messages)."""
    result = relay.cli("alice", "recv")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "no new messages (logged in as @alice; your prekeys are on the relay)" in (
        result.stderr)


def test_adding_someone_with_no_prekeys_fails_with_the_reason(relay: Stack) -> None:
    result = relay.cli("alice", "contacts", "add", "nobody")
    assert result.returncode == EXIT_FAILED
    assert "nobody" in one_line_failure(result, "contacts")
    assert result.stdout == ""


def test_a_message_to_nobody_is_reported_and_the_exit_says_it_was_not_sent(
        relay: Stack) -> None:
    result = relay.cli("alice", "send", "nobody", "hello?")
    assert result.returncode == EXIT_NOT_DONE
    assert "nobody" in one_line_failure(result, "send")


def test_a_wrong_passphrase_fails_with_the_reason(relay: Stack) -> None:
    result = relay.cli("alice", "recv", passphrase="not-the-passphrase")
    assert result.returncode == EXIT_FAILED
    assert "passphrase" in one_line_failure(result, "recv")


def test_a_relay_that_does_not_answer_fails_with_the_reason(relay: Stack) -> None:
    result = relay.cli(None, "recv", "--data", str(relay.profile("alice")),
                       "--relay", f"ws://127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == EXIT_FAILED
    assert "relay" in one_line_failure(result, "recv")


def test_a_missing_profile_fails_with_the_reason(relay: Stack) -> None:
    result = relay.cli("nobody", "contacts", "list")
    assert result.returncode == EXIT_FAILED
    assert "qsecret init" in one_line_failure(result, "contacts")


def test_sending_a_missing_file_fails_before_going_online(relay: Stack, tmp_path: Path) -> None:
    result = relay.cli("alice", "send-file", "bob", str(tmp_path / "absent.bin"))
    assert result.returncode == EXIT_FAILED
    assert "absent.bin" in one_line_failure(result, "send-file")


# -- the mapping itself ------------------------------------------------------------------


def test_every_user_error_names_an_exception_class_that_exists() -> None:
    """A renamed or moved class would silently turn its errors back into tracebacks."""
    for target in (*USER_ERRORS, *(target for target, _ in EXIT_STATUS_OF)):
        module, _, name = target.partition(":")
        cls = getattr(importlib.import_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, Exception), target


@pytest.mark.parametrize("target", USER_ERRORS)
def test_each_user_error_is_one_line_and_status_2(
        target: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    error = cls.__new__(cls)
    Exception.__init__(error, "the relay refused the prekey upload:\n too_large")

    def command(args: argparse.Namespace) -> int:
        raise error

    args = argparse.Namespace(command="recv", func=command)
    assert run(args, argparse.ArgumentParser()) == EXIT_FAILED
    assert capsys.readouterr().err == (
        "qsecret recv: the relay refused the prekey upload: too_large\n")


def test_a_cli_error_is_one_line_and_a_bug_keeps_its_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(args: argparse.Namespace) -> int:
        raise CliError("no such file or folder: x")

    def bug(args: argparse.Namespace) -> int:
        raise KeyError("oops")

    parser = argparse.ArgumentParser()
    assert run(argparse.Namespace(command="send-file", func=refuse), parser) == EXIT_FAILED
    assert capsys.readouterr().err == "qsecret send-file: no such file or folder: x\n"
    with pytest.raises(KeyError):
        run(argparse.Namespace(command="send", func=bug), parser)
