"""Contacts with unread counts, verification state and an online hint."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from client.messenger.api import ContactView


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


class ContactList(OptionList):
    """Select a contact to open the conversation with them."""

    class Chosen(Message):
        def __init__(self, handle: str) -> None:
            self.handle = handle
            super().__init__()

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._contacts: dict[str, ContactView] = {}
        self.active: str | None = None

    def set_contacts(self, contacts: list[ContactView]) -> None:
        self._contacts = {c.handle: c for c in contacts}
        self._render_options()

    def update_contact(self, contact: ContactView) -> None:
        self._contacts[contact.handle] = contact
        self._render_options()

    def handles(self) -> list[str]:
        return sorted(self._contacts)

    def _render_options(self) -> None:
        highlighted = self.highlighted
        self.clear_options()
        self.add_options(
            Option(contact_label(self._contacts[h], h == self.active), id=h)
            for h in self.handles()
        )
        if self.option_count:
            self.highlighted = min(highlighted or 0, self.option_count - 1)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id:
            self.post_message(self.Chosen(event.option.id))
