"""Contacts and groups with unread counts, verification state and an online hint."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from client.messenger.api import ContactView, ConversationId, ConversationKind, GroupView

GROUP_MARK = "#"  # how a group stands apart from a contact in the list


def contact_label(contact: ContactView, active: bool = False) -> Text:
    dot = {True: ("●", "green"), False: ("○", "grey50"), None: ("·", "grey50")}[contact.online]
    label = Text()
    label.append(f"{dot[0]} ", style=dot[1])
    label.append(contact.handle, style="bold" if contact.unread or active else "")
    if contact.verified:
        label.append(" ✔", style="green")
    else:
        label.append(" ?", style="yellow")
    if contact.unread:
        label.append(f" ({contact.unread})", style="bold magenta")
    return label


def group_label(group: GroupView, unread: int = 0, active: bool = False) -> Text:
    """``# trio (3)``; a group this member was removed from or left is greyed and says so."""
    member = group.status == "member"
    label = Text()
    label.append(f"{GROUP_MARK} ", style="bold blue" if member else "grey50")
    label.append(group.name, style=("bold" if unread or active else "") if member else "grey50")
    if not member:
        label.append(f" ({group.status})", style="grey50")
    if unread:
        label.append(f" ({unread})", style="bold magenta")
    return label


def option_id(conversation: ConversationId) -> str:
    """Contacts keep their handle as the option's ID; a group's is ``group:<id>``."""
    if conversation.kind is ConversationKind.DIRECT:
        return conversation.key
    return str(conversation)


class ContactList(OptionList):
    """Select a contact or a group to open the conversation with them."""

    class Chosen(Message):
        def __init__(self, conversation: ConversationId) -> None:
            self.conversation = conversation
            super().__init__()

        @property
        def handle(self) -> str:
            return self.conversation.key

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._contacts: dict[str, ContactView] = {}
        self._groups: dict[str, GroupView] = {}  # by group ID
        self._group_unread: dict[str, int] = {}
        self.active: ConversationId | None = None

    def set_contacts(self, contacts: list[ContactView]) -> None:
        self._contacts = {c.handle: c for c in contacts}
        self._render_options()

    def update_contact(self, contact: ContactView) -> None:
        self._contacts[contact.handle] = contact
        self._render_options()

    def set_groups(self, groups: list[GroupView], unread: dict[str, int]) -> None:
        self._groups = {g.group_id: g for g in groups}
        self._group_unread = dict(unread)
        self._render_options()

    def handles(self) -> list[str]:
        return sorted(self._contacts)

    def groups(self) -> list[GroupView]:
        """Groups as listed: by name."""
        return sorted(self._groups.values(), key=lambda g: (g.name, g.group_id))

    def conversations(self) -> list[ConversationId]:
        """Everything listed, in order: contacts first, then groups."""
        return [ConversationId.direct(h) for h in self.handles()] + [
            g.conversation for g in self.groups()]

    def unread(self, group_id: str) -> int:
        return self._group_unread.get(group_id, 0)

    def label(self, conversation: ConversationId) -> str:
        """The plain text of a listed conversation's line (what the user sees)."""
        return str(self.get_option(option_id(conversation)).prompt)

    def _render_options(self) -> None:
        highlighted = self.highlighted
        self.clear_options()
        self.add_options(
            Option(contact_label(self._contacts[h], ConversationId.direct(h) == self.active),
                   id=h)
            for h in self.handles()
        )
        self.add_options(
            Option(group_label(g, self.unread(g.group_id), g.conversation == self.active),
                   id=option_id(g.conversation))
            for g in self.groups()
        )
        if self.option_count:
            self.highlighted = min(highlighted or 0, self.option_count - 1)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        option = event.option.id
        if not option:
            return
        prefix = f"{ConversationKind.GROUP.value}:"
        if option.startswith(prefix) and option[len(prefix):] in self._groups:
            self.post_message(self.Chosen(
                ConversationId(ConversationKind.GROUP, option[len(prefix):])))
        else:
            self.post_message(self.Chosen(ConversationId.direct(option)))
