"""How a ``qsecret`` command fails: one line on standard error and a non-zero exit status.

Exit status, the same for every command:

- 0: done.
- 1: the command ran but what it asked for did not happen (a message not sent, a transfer
  declined, cancelled or failed, transfers still unfinished when nothing moved).
- 2: the command could not run: bad arguments, no profile or a wrong passphrase, or the relay,
  the KME or the transfer refused (every ``MessengerError`` and ``TransferError``); the line
  on standard error says why, as ``qsecret COMMAND: reason``.
- 3: the profile's store is damaged (``client.store.CorruptStore``): the line names the file
  and what is wrong; nothing was written to it. ``qsecret doctor --store`` lists the damaged
  rows; ``qsecret restore FILE`` puts a backup back (README, "Backups").
- 130: interrupted (Ctrl+C); unfinished transfers are paused, not lost.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_NOT_DONE = 1
EXIT_FAILED = 2
EXIT_DAMAGED = 3
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = """\
exit status:
  0    done
  1    ran, but it did not happen (message not sent, transfer declined or unfinished)
  2    could not run: bad arguments, profile or passphrase, or the relay, KME or
       transfer refused; one line on standard error says why
  3    the profile's store is damaged: the line names the file and the damage
       (nothing was written to it); see 'qsecret doctor --store', 'qsecret restore'
  130  interrupted (Ctrl+C); unfinished transfers are paused"""

# The failures a user can meet and act on, by the module that defines each. They are looked
# up in sys.modules, not imported: an exception of that class can only exist once its module
# has loaded, and mapping an error must neither import the messenger nor fail itself.
# tests/unit/test_cli_errors.py checks that every entry names a class that exists.
USER_ERRORS: tuple[str, ...] = (
    "client.messenger.api:MessengerError",
    "client.transfer.errors:TransferError",
    "client.call.audio:AudioError",
    "client.config:ConfigError",
    "client.store.sealed:StoreError",
    "client.processes:ServiceError",
    "keysource.kme.tls:PkiError",
)


# Failures with their own exit status (looked up like USER_ERRORS), checked along the chain
# of causes: the messenger wraps a damaged store's error in its own (``raise ... from``).
EXIT_STATUS_OF: tuple[tuple[str, int], ...] = (
    ("client.store.sealed:CorruptStore", EXIT_DAMAGED),
)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def user_message(exc: BaseException) -> str | None:
    """The one line to show for ``exc`` if it is a failure the user can act on, else None
    (a bug: the traceback is more useful than a sentence)."""
    if isinstance(exc, CliError):
        return str(exc)
    for target in USER_ERRORS:
        module_name, _, class_name = target.partition(":")
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return one_line(exc)
    if isinstance(exc, OSError):  # a file, folder or port the user named or the system refused
        return one_line(exc)
    return None


def exit_status(exc: BaseException) -> int:
    """The exit status of a failure ``user_message`` accepted: EXIT_DAMAGED for a damaged
    store (the error itself or what caused it), else EXIT_FAILED."""
    seen: BaseException | None = exc
    while seen is not None:
        for target, status in EXIT_STATUS_OF:
            module_name, _, class_name = target.partition(":")
            module = sys.modules.get(module_name)
            if module is not None and isinstance(seen, getattr(module, class_name)):
                return status
        seen = seen.__cause__
    return EXIT_FAILED


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a multi-line reason would read as two errors)."""
    return " ".join(str(exc).split()) or type(exc).__name__
