"""'qsecret COMMAND --help' teaches: what the command does, examples, what its exit status
means (the parsers are built in-process; nothing runs)."""

from __future__ import annotations

import argparse

import pytest

from client.cli.entry import BUILTIN_COMMANDS, build_parser

CLIENT_COMMANDS = sorted(name for name, target in BUILTIN_COMMANDS.items()
                         if target.startswith("client."))


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser(command)
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_each_client_command_says_what_it_does_with_examples(command: str) -> None:
    text = _subparser(command).format_help()
    assert _subparser(command).description
    assert "examples:\n  qsecret " in text
    if command != "doctor":  # doctor only reports; it has no failure to explain
        assert "exit status:" in text and "2    could not run" in text


def test_the_top_level_help_explains_the_exit_status() -> None:
    text = build_parser().format_help()
    assert "exit status:" in text and "130  interrupted" in text


def test_each_positional_argument_is_explained() -> None:
    for command in CLIENT_COMMANDS:
        parsers = [_subparser(command)]
        for action in parsers[0]._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
        for parser in parsers:
            for action in parser._actions:
                if not action.option_strings and not isinstance(
                        action, argparse._SubParsersAction):
                    assert action.help, f"{parser.prog} {action.metavar}"
