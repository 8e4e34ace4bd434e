"""The ``qsecret`` command line, by topic.

- ``entry``: ``main`` (the ``qsecret`` script) and the dispatcher; builds only the parser of
  the command being run.
- ``parsers``: argparse for the client's commands, nothing else; each command's module is
  imported when it runs.
- ``session``: what the client's commands share (config, passphrase, opening the messenger).
- ``profile`` (init), ``chat``, ``messages`` (send, recv, export), ``contacts``, ``files``
  (send-file, receive-files, transfers; ``send_file`` starts listing the files first), ``doctor``,
  ``demo``.
- ``errors``: ``CliError`` and how every failure becomes one line and an exit status.

Imports flow one way: ``entry`` → ``parsers`` (by name, at run time) → command modules →
``session`` → ``errors``; no module here imports ``entry`` or this package.
"""

from .entry import BUILTIN_COMMANDS, build_parser, main

__all__ = ["BUILTIN_COMMANDS", "build_parser", "main"]
