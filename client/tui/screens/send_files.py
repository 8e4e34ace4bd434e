"""Choose the files (or folders) to send: typed or pasted paths, checked before sending."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, Input, Label, Static

MAX_LISTED = 2000  # directory entries looked at per completion, so a huge folder never stalls


class PathSuggester(Suggester):
    """Completes the last path typed (right arrow accepts), like a shell's Tab."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value or value.endswith(" "):
            return None
        head, _, last = value.rpartition(" ")
        if last.startswith(("'", '"')):
            return None  # quoted names: no completion rather than a wrong one
        expanded = os.path.expanduser(last)
        folder, prefix = os.path.split(expanded)
        try:
            with os.scandir(folder or ".") as entries:
                names = []
                for count, entry in enumerate(entries):
                    if count >= MAX_LISTED:
                        break
                    if entry.name.startswith(prefix) and entry.name != prefix and (
                            prefix.startswith(".") or not entry.name.startswith(".")):
                        names.append(entry.name + ("/" if entry.is_dir() else ""))
        except OSError:
            return None
        if not names:
            return None
        completion = os.path.commonprefix(sorted(names))[len(prefix):]
        if not completion or " " in completion:
            return None
        return value + completion


def parse_paths(value: str) -> list[Path]:
    """Shell-like words (quotes and backslashes, as terminals paste dropped files); ~ expanded.

    Raises ValueError with a message for the user.
    """
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"Cannot read the paths: {exc} (quote names with spaces)") from None
    if not words:
        raise ValueError("Type the path of at least one file or folder.")
    return [Path(os.path.expanduser(word)) for word in words]


def check_paths(paths: list[Path]) -> str | None:
    """The first problem with the chosen paths, or None when every one can be sent."""
    for path in paths:
        if not path.exists():
            return f"No such file or folder: {path}"
        if not os.access(path, os.R_OK):
            return f"Cannot read {path}: permission denied"
        if not (path.is_file() or path.is_dir()):
            return f"Not a regular file or folder: {path}"
    return None


class PathsInput(Input):
    """An Input that keeps every line of a multi-line paste (one path per line)."""

    def _on_paste(self, event: events.Paste) -> None:
        lines = [line.strip() for line in event.text.splitlines() if line.strip()]
        if len(lines) > 1:
            event.stop()
            joined = " ".join(shlex.quote(line) for line in lines)
            prefix = "" if not self.value or self.value.endswith(" ") else " "
            self.insert_text_at_cursor(prefix + joined)
            return
        super()._on_paste(event)


class SendFilesScreen(ModalScreen[list[str] | None]):
    """Returns absolute paths that exist and can be read, or None when abandoned."""

    BINDINGS = [("escape", "dismiss(None)", "Back")]

    def __init__(self, peer: str) -> None:
        """``peer``: a handle, or ``@name`` for a group (the files are uploaded once and
        the relay keeps a copy for each member)."""
        super().__init__()
        self.peer = peer

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="send-files"):
            yield Label(f"Send files to {self.peer}", classes="title")
            if self.peer.startswith("@"):
                yield Static("A group file: offered to every member, uploaded once; members "
                             "who are offline get it when they are back.", classes="hint")
            yield PathsInput(placeholder="~/report.pdf ~/photos", id="paths",
                             suggester=PathSuggester())
            yield Static("Files or folders, separated by spaces; quote names with spaces. "
                         "→ completes a path. Enter sends, Esc cancels.", classes="hint")
            yield Static("", id="paths-error")
            with Horizontal(classes="buttons"):
                yield Button("Send", variant="primary", id="send")
                yield Button("Cancel", id="cancel")

    @on(Input.Changed, "#paths")
    def clear_error(self) -> None:
        self.query_one("#paths-error", Static).update("")

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted, "#paths")
    @on(Button.Pressed, "#send")
    def send(self) -> None:
        error = self.query_one("#paths-error", Static)
        try:
            paths = parse_paths(self.query_one("#paths", Input).value)
        except ValueError as exc:
            error.update(str(exc))
            return
        problem = check_paths(paths)
        if problem:
            error.update(problem)
            self.query_one("#paths", Input).focus()
            return
        self.dismiss([str(path.absolute()) for path in paths])
