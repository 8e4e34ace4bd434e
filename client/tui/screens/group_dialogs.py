"""Small modal dialogs for groups: create one, choose members, rename, confirm leaving."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, SelectionList

MAX_GROUP_NAME = 64  # a name is shown in one line of the contact list


class CreateGroupScreen(ModalScreen[tuple[str, list[str]] | None]):
    """A name and members chosen among the contacts (space ticks one, Enter on the name or
    the button creates)."""

    BINDINGS = [("escape", "dismiss(None)", "Back")]

    def __init__(self, contacts: list[str]) -> None:
        super().__init__()
        self.contacts = contacts

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("New group: a name and its members")
            yield Input(placeholder="name, e.g. trio", max_length=MAX_GROUP_NAME, id="name")
            yield SelectionList[str](*[(h, h) for h in self.contacts], id="members")
            yield Label("", id="problem", classes="problem")
            yield Button("Create", variant="primary", id="create")

    @on(Input.Submitted)
    @on(Button.Pressed, "#create")
    def create(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        members = list(self.query_one("#members", SelectionList).selected)
        problem = ("Give the group a name." if not name
                   else "Choose at least one member (space ticks a contact)." if not members
                   else "")
        if problem:
            self.query_one("#problem", Label).update(problem)
            return
        self.dismiss((name, members))


class ChooseMembersScreen(ModalScreen[list[str] | None]):
    """Tick some of ``candidates`` (to add to or remove from a group)."""

    BINDINGS = [("escape", "dismiss(None)", "Back")]

    def __init__(self, title: str, candidates: list[str], action: str) -> None:
        super().__init__()
        self.title_text = title
        self.candidates = candidates
        self.action_label = action

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text)
            yield SelectionList[str](*[(h, h) for h in self.candidates], id="members")
            yield Label("", id="problem", classes="problem")
            yield Button(self.action_label, variant="primary", id="done")

    def on_mount(self) -> None:
        self.query_one("#members", SelectionList).focus()

    @on(Button.Pressed, "#done")
    def done(self) -> None:
        members = list(self.query_one("#members", SelectionList).selected)
        if not members:
            self.query_one("#problem", Label).update("Tick someone first (space).")
            return
        self.dismiss(members)


class RenameGroupScreen(ModalScreen[str | None]):
    BINDINGS = [("escape", "dismiss(None)", "Back")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Rename #{self.current}")
            yield Input(value=self.current, max_length=MAX_GROUP_NAME, id="name")
            yield Button("Rename", variant="primary", id="rename")

    @on(Input.Submitted)
    @on(Button.Pressed, "#rename")
    def rename(self) -> None:
        name = self.query_one("#name", Input).value.strip()
        if name and name != self.current:
            self.dismiss(name)


class LeaveGroupScreen(ModalScreen[bool]):
    BINDINGS = [("escape", "dismiss(False)", "Back")]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.group_name = name

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Leave #{self.group_name}? You will receive nothing sent afterwards.")
            yield Button("Leave", variant="error", id="leave")

    @on(Button.Pressed, "#leave")
    def leave(self) -> None:
        self.dismiss(True)
