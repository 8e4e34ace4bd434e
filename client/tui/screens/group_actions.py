"""The chat screen's group half: group conversations, their unread counts and membership
lines, and the actions (create, add, remove, rename, leave) with their dialogs.

A mixin of :class:`client.tui.screens.chat.ChatScreen`, kept apart so that screen stays
about one-to-one conversations; it talks to the messenger only through its API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.binding import Binding

from client.messenger.api import (
    ConversationId,
    ConversationKind,
    Delivery,
    GroupChangeView,
    GroupEvent,
    GroupView,
    MessageView,
    Messenger,
    MessengerError,
)
from client.tui.screens.group_dialogs import (
    ChooseMembersScreen,
    CreateGroupScreen,
    LeaveGroupScreen,
    RenameGroupScreen,
)
from client.tui.widgets.contact_list import GROUP_MARK, ContactList
from client.tui.widgets.conversation import Conversation
from client.tui.widgets.message_input import MessageInput

if TYPE_CHECKING:
    from textual.screen import Screen

    _Base = Screen[None]
else:
    _Base = object

# Out of the footer (show=False) so it stays as it was; F1 and the palette list them.
GROUP_BINDINGS = [
    Binding("f3", "new_group", "New group", show=False, priority=True),
    Binding("f4", "group_add", "Add to group", show=False, priority=True),
    Binding("f5", "group_remove", "Remove from group", show=False, priority=True),
    Binding("f6", "group_rename", "Rename group", show=False, priority=True),
    Binding("f7", "group_leave", "Leave group", show=False, priority=True),
]
# What the command palette says of each (the palette's entries are built from the bindings).
GROUP_HELP = {
    "new_group": "A group with some of your contacts",
    "group_add": "Add contacts to the open group (admins)",
    "group_remove": "Remove members from the open group (admins)",
    "group_rename": "Rename the open group (admins)",
    "group_leave": "Leave the open group",
}


def describe_change(change: GroupChangeView, me: str) -> str:
    """One membership change in a line, e.g. "alice removed carol" ("you" for ``me``)."""
    def who(handles: tuple[str, ...]) -> str:
        return ", ".join("you" if h == me else h for h in handles)

    author = "you" if change.author == me else change.author
    text = {
        "create": f"{author} created {change.name} with {who(change.handles[1:])}",
        "add": f"{author} added {who(change.handles)}",
        "remove": f"{author} removed {who(change.handles)}",
        "leave": f"{author} left",
        "rename": f"{author} renamed the group {change.name}",
        "promote": f"{author} made {who(change.handles)} admin",
        "demote": f"{author} no longer made {who(change.handles)} admin",
    }.get(change.op, f"{author}: {change.op}")
    if change.effect:
        text += f" (no effect: {change.effect})"
    return text


def group_notes(group: GroupView, me: str) -> list[tuple[float, str]]:
    """The membership lines of a group conversation, and, for a member no longer in it,
    a last line saying so."""
    notes = [(c.at, describe_change(c, me)) for c in group.changes]
    if group.status == "removed":
        last = group.changes[-1].at if group.changes else 0.0
        notes.append((last, f"you were removed by {group.removed_by}: "
                            "nothing sent to the group reaches you any more"))
    elif group.status == "left":
        last = group.changes[-1].at if group.changes else 0.0
        notes.append((last, "you left the group"))
    return notes


class GroupActions(_Base):
    """Group conversations on the chat screen (see the module's docstring)."""

    messenger: Messenger
    conversation: ConversationId | None
    _group_unread: dict[str, int]  # group ID -> messages arrived while another was open

    # -- the list and the open group -------------------------------------------------

    @property
    def group(self) -> GroupView | None:
        """The open group conversation's group, as the messenger sees it now."""
        if self.conversation is None or self.conversation.kind is not ConversationKind.GROUP:
            return None
        return self._groups().get(self.conversation.key)

    def _groups(self) -> dict[str, GroupView]:
        return {g.group_id: g for g in self.messenger.group_list()}

    def load_group_unread(self) -> None:
        """Unread counts left from before (what neither this app nor ``recv`` showed)."""
        self._group_unread = self.messenger.group_unread()
        self.refresh_groups()

    def _mark_shown(self, group_id: str) -> None:
        self._group_unread.pop(group_id, None)
        try:
            self.messenger.mark_group_shown(group_id)
        except MessengerError:
            return  # stopping: counted again at the next start, nothing lost

    def refresh_groups(self) -> None:
        if not self.messenger.stopped:
            self.query_one(ContactList).set_groups(self.messenger.group_list(),
                                                   self._group_unread)

    def open_group(self, group_id: str) -> None:
        group = self._groups().get(group_id)
        if group is None:
            return
        self.conversation = group.conversation
        self._mark_shown(group_id)
        contacts = self.query_one(ContactList)
        contacts.active = self.conversation
        self.query_one(Conversation).show(
            f"{GROUP_MARK}{group.name}", self.messenger.group_history(group_id), [],
            group_notes(group, self.messenger.handle))
        box = self.query_one(MessageInput)
        box.placeholder = (f"Message {GROUP_MARK}{group.name} (Enter to send)"
                           if group.status == "member"
                           else f"You are no longer in {GROUP_MARK}{group.name}")
        self.refresh_groups()
        self.refresh_keys()  # type: ignore[attr-defined]

    def group_message(self, message: MessageView) -> None:
        """A group message arrived (or was sent from another terminal of this profile)."""
        if message.conversation == self.conversation:
            self.query_one(Conversation).add(message)
            self._mark_shown(message.group_id)
        elif not message.outgoing:
            self._group_unread[message.group_id] = self._group_unread.get(message.group_id,
                                                                          0) + 1
            self.notify(message.text[:80],
                        title=f"{message.peer} in {GROUP_MARK}{message.group}")
        self.refresh_groups()

    def group_changed(self, event: GroupEvent) -> None:
        """Someone else changed a group's membership (or made this member join or leave),
        or a change was refused (forged, by a non-admin): said, nothing changed."""
        if event.refused:
            self.notify(event.note, title=f"{GROUP_MARK}{event.group.name}: refused",
                        severity="warning", timeout=15)
            self.refresh_groups()
            return
        if self.conversation is None or event.group.conversation == self.conversation:
            self.open_group(event.group.group_id)  # (re-)shown with the new line
        else:
            self.notify(event.note, title=f"{GROUP_MARK}{event.group.name}")
            self.refresh_groups()

    @work(group="send")
    async def send_to_group(self, group_id: str, text: str) -> None:
        try:
            message = await self.messenger.send_group(group_id, text)
        except MessengerError as exc:
            self.notify(str(exc), title="Not sent to the group", severity="error", timeout=8)
            return
        if self.messenger.stopped:
            return
        if message.delivery is Delivery.PENDING:  # the relay holds a copy for everyone
            message = MessageView(**{**message.__dict__, "delivery": Delivery.SENT})
        if message.conversation == self.conversation:
            self.query_one(Conversation).add(message)

    # -- actions -----------------------------------------------------------------------

    def _open_group_or_say(self) -> GroupView | None:
        group = self.group
        if group is None:
            self.notify("Open a group first (F3 makes one).", severity="warning")
        return group

    def action_new_group(self) -> None:
        contacts = [c.handle for c in self.messenger.contacts()]
        if not contacts:
            self.notify("Add a contact first (Ctrl+N): a group needs members.",
                        severity="warning")
            return

        def chosen(result: tuple[str, list[str]] | None) -> None:
            if result is not None:
                self.change_group("create", "", *result)

        self.app.push_screen(CreateGroupScreen(contacts), chosen)

    def action_group_add(self) -> None:
        group = self._open_group_or_say()
        if group is None:
            return
        candidates = [c.handle for c in self.messenger.contacts()
                      if c.handle not in group.members]
        if not candidates:
            self.notify("Every contact is in the group already; Ctrl+N adds a contact.",
                        severity="warning")
            return
        self.app.push_screen(
            ChooseMembersScreen(f"Add to {GROUP_MARK}{group.name}", candidates, "Add"),
            lambda members: members and self.change_group("add", group.group_id, "",
                                                          members))

    def action_group_remove(self) -> None:
        group = self._open_group_or_say()
        if group is None:
            return
        candidates = [m for m in group.members if m != self.messenger.handle]
        if not candidates:
            self.notify("Nobody else is in the group.", severity="warning")
            return
        self.app.push_screen(
            ChooseMembersScreen(f"Remove from {GROUP_MARK}{group.name}", candidates,
                                "Remove"),
            lambda members: members and self.change_group("remove", group.group_id, "",
                                                          members))

    def action_group_rename(self) -> None:
        group = self._open_group_or_say()
        if group is not None:
            self.app.push_screen(
                RenameGroupScreen(group.name),
                lambda name: name and self.change_group("rename", group.group_id, name, []))

    def action_group_leave(self) -> None:
        group = self._open_group_or_say()
        if group is not None:
            self.app.push_screen(
                LeaveGroupScreen(group.name),
                lambda leave: leave and self.change_group("leave", group.group_id, "", []))

    @work(group="groups")
    async def change_group(self, op: str, group_id: str, name: str,
                           members: list[str]) -> None:
        """Create, add, remove, rename or leave; a refusal (not an admin, an unknown
        contact, the relay away) is shown and changes nothing."""
        messenger = self.messenger
        try:
            if op == "create":
                view = await messenger.create_group(name, members)
            elif op == "add":
                view = await messenger.add_to_group(group_id, members)
            elif op == "remove":
                view = await messenger.remove_from_group(group_id, members)
            elif op == "rename":
                view = await messenger.rename_group(group_id, name)
            else:
                view = await messenger.leave_group(group_id)
        except MessengerError as exc:
            self.notify(str(exc), title=f"Group not changed ({op})", severity="error",
                        timeout=10)
            return
        if messenger.stopped:
            return
        self.open_group(view.group_id)
        if view.changes:
            self.notify(describe_change(view.changes[-1], messenger.handle),
                        title=f"{GROUP_MARK}{view.name}")
