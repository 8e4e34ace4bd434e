"""``qsecret relay --help`` explains every option (a new user reads it before the README)."""

from __future__ import annotations

import argparse

from relay.cli import register


def test_every_relay_option_has_a_description() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    relay = parser.parse_args(["relay"]).__dict__  # defaults, to check they are stated
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = [a for a in sub.choices["relay"]._actions if a.option_strings
               and a.dest != "help"]
    undescribed = [a.option_strings[0] for a in options if not (a.help or "").strip()]
    assert not undescribed, f"options with no --help text: {undescribed}"
    port = next(a for a in options if a.dest == "port")
    assert str(relay["port"]) in port.help  # the default port is stated
