"""The main screen: contacts, the open conversation, the key panel and the status bar."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header

from client.call.levels import MeteredSink, MeteredSource
from client.messenger.api import (
    CallEvent,
    CallState,
    CallView,
    ConnectionEvent,
    ContactEvent,
    ConversationId,
    ConversationKind,
    DeliveryEvent,
    ErrorEvent,
    Event,
    GroupEvent,
    GroupReceiptEvent,
    KeyStatusEvent,
    MessageEvent,
    Messenger,
    MessengerError,
    TransferEvent,
    TransferState,
    TransferView,
)
from client.tui.screens.call import NO_SOUND_HINT, CallScreen, IncomingCallScreen
from client.tui.screens.group_actions import GROUP_BINDINGS, GroupActions
from client.tui.screens.help import HelpScreen
from client.tui.screens.modals import AddContactScreen, ExportScreen
from client.tui.screens.search import SearchScreen
from client.tui.screens.send_files import SendFilesScreen
from client.tui.screens.transfers import TransfersScreen
from client.tui.screens.verify import VerifyScreen
from client.tui.widgets.contact_list import ContactList
from client.tui.widgets.conversation import Conversation
from client.tui.widgets.key_panel import KeyPanel
from client.tui.widgets.message_input import MessageInput
from client.tui.widgets.status_bar import StatusBar
from client.tui.widgets.transfer_list import format_bytes


class ServiceEvent(Message):
    """A messenger event carried into Textual's message queue (thread-safe post)."""

    def __init__(self, event: Event) -> None:
        self.event = event
        super().__init__()


class ChatScreen(GroupActions, Screen[None]):
    # priority=True: these must work while the message Input has focus.
    BINDINGS = [
        Binding("f1", "help", "Help", priority=True),
        Binding("ctrl+n", "add_contact", "Add contact", priority=True),
        Binding("ctrl+s", "verify", "Safety number", priority=True),
        Binding("ctrl+f", "search", "Search", priority=True),
        Binding("ctrl+e", "export", "Export", priority=True),
        Binding("ctrl+o", "toggle_otp", "OTP mode", priority=True),
        Binding("ctrl+k", "toggle_keys", "Key panel", priority=True),
        Binding("ctrl+t", "send_files", "Send file", priority=True),
        Binding("ctrl+j", "transfers", "Transfers", priority=True),
        Binding("ctrl+g", "call", "Call", priority=True),
        Binding("ctrl+down", "cycle(1)", "Next chat", priority=True),
        Binding("ctrl+up", "cycle(-1)", "Previous chat", priority=True),
        Binding("escape", "back", "Back to input", show=False),
        *GROUP_BINDINGS,
    ]

    def __init__(self, messenger: Messenger, export_dir: Path) -> None:
        super().__init__()
        self.messenger = messenger
        self.export_dir = export_dir
        self.conversation: ConversationId | None = None  # the open conversation
        self._transfer_states: dict[str, TransferState] = {}
        # A call's metered microphone and speaker, from answer/place until it ends.
        self._sound: dict[str, tuple[MeteredSource, MeteredSink]] = {}
        self._group_unread: dict[str, int] = {}

    @property
    def peer(self) -> str | None:
        """The other party of the open conversation; None for none or a group."""
        if self.conversation is None or self.conversation.kind is not ConversationKind.DIRECT:
            return None
        return self.conversation.peer

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield ContactList(id="contacts")
            with Vertical(id="center"):
                yield Conversation(id="conversation")
                yield MessageInput(id="message")
            yield KeyPanel(id="keys")
        yield StatusBar(self.messenger.handle, id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.app.sub_title = f"@{self.messenger.handle}"
        contacts = self.messenger.contacts()
        self.query_one(ContactList).set_contacts(contacts)
        self.load_group_unread()
        for transfer in self.messenger.transfers():  # offers left from the last session
            self.transfer_changed(transfer)
        self.open_conversation(contacts[0].handle if contacts else None)
        self.messenger.subscribe(lambda event: self.post_message(ServiceEvent(event)))
        self.start_service()
        self.query_one(MessageInput).focus()

    @work(exclusive=True, group="service")
    async def start_service(self) -> None:
        await self.messenger.start()

    # -- conversation ------------------------------------------------------------------

    def open_conversation(self, peer: str | None) -> None:
        self.conversation = ConversationId.direct(peer) if peer is not None else None
        contacts = self.query_one(ContactList)
        contacts.active = self.conversation
        transfers = [t for t in self.messenger.transfers() if t.peer == peer]
        self.query_one(Conversation).show(peer, self.messenger.history(peer) if peer else [],
                                          transfers)
        self.refresh_keys()
        if peer:
            self.mark_read(peer)
            self.query_one(MessageInput).placeholder = f"Message {peer} (Enter to send)"
            contacts.set_contacts(self.messenger.contacts())

    @work(group="read")
    async def mark_read(self, peer: str) -> None:
        try:
            await self.messenger.mark_read(peer)
        except MessengerError:
            return  # stopping: the receipts go at the next start
        if not self.messenger.stopped:
            self.query_one(ContactList).set_contacts(self.messenger.contacts())

    def refresh_keys(self) -> None:
        if not self.messenger.stopped:  # quitting: the store may be closed already
            self.query_one(KeyPanel).show(self.messenger.key_status(self.peer))

    @on(ContactList.Chosen)
    def chosen(self, event: ContactList.Chosen) -> None:
        self.open_chosen(event.conversation)
        self.query_one(MessageInput).focus()

    @on(MessageInput.Submitted, "#message")
    def submit(self, event: MessageInput.Submitted) -> None:
        text = event.value.strip()
        box = self.query_one(MessageInput)
        if not text:
            return
        group = self.group
        if self.peer is None and group is None:
            self.notify("Add a contact first (Ctrl+N).", severity="warning")
            return
        box.remember(text)
        box.value = ""
        if group is not None:
            self.send_to_group(group.group_id, text)
        elif self.peer is not None:
            self.send(self.peer, text)

    @work(group="send")
    async def send(self, peer: str, text: str) -> None:
        try:
            message = await self.messenger.send(peer, text)
        except MessengerError as exc:
            self.notify(str(exc), title="Not sent", severity="error", timeout=8)
            return
        if peer == self.peer and not self.messenger.stopped:
            self.query_one(Conversation).add(message)
        self.refresh_keys()

    # -- service events ----------------------------------------------------------------

    @on(ServiceEvent)
    def service_event(self, message: ServiceEvent) -> None:
        event = message.event
        if self.messenger.stopped:
            return  # posted before the messenger stopped; its store may be closed now
        if isinstance(event, ErrorEvent):
            error = event.error
            title = f"Relay refused ({error.code})" if error.code else "Error"
            self.notify(str(error), title=title, severity="error", timeout=20)
        elif isinstance(event, MessageEvent) and event.message.group_id:
            if self.conversation is None:
                self.open_group(event.message.group_id)
            else:
                self.group_message(event.message)
        elif isinstance(event, GroupEvent):
            self.group_changed(event)
        elif isinstance(event, MessageEvent):
            incoming = event.message
            if self.conversation is None:
                self.open_conversation(incoming.peer)
            elif incoming.conversation == self.conversation:
                self.query_one(Conversation).add(incoming)
                if not incoming.outgoing:
                    self.mark_read(incoming.peer)
            elif not incoming.outgoing:
                self.notify(incoming.text[:80], title=f"New message from {incoming.peer}")
            self.query_one(ContactList).set_contacts(self.messenger.contacts())
            self.refresh_keys()
        elif isinstance(event, GroupReceiptEvent):
            if event.conversation == self.conversation:
                self.query_one(Conversation).set_receipts(event.message_id, event.counts)
        elif isinstance(event, DeliveryEvent):
            if event.conversation == self.conversation:
                self.query_one(Conversation).set_delivery(event.message_id, event.delivery)
        elif isinstance(event, ConnectionEvent):
            self.query_one(StatusBar).show(event)
        elif isinstance(event, KeyStatusEvent):
            self.refresh_keys()
        elif isinstance(event, ContactEvent):
            self.query_one(ContactList).update_contact(event.contact)
            if self.conversation is None:
                self.open_conversation(event.contact.handle)
        elif isinstance(event, TransferEvent):
            self.transfer_changed(event.transfer)
        elif isinstance(event, CallEvent):
            self.call_changed(event.call)

    # -- calls -------------------------------------------------------------------------

    def call_changed(self, call: CallView) -> None:
        """Ring for an incoming call; say how a call ended when its screen is not shown."""
        ringing = [s for s in self.app.screen_stack
                   if isinstance(s, IncomingCallScreen) and s.call_id == call.call_id]
        if call.state is CallState.RINGING and not call.outgoing and not ringing:
            self.app.push_screen(IncomingCallScreen(call),
                                 lambda answer: self.answer_or_decline(call, bool(answer)))
        elif call.state is CallState.ENDED:
            for screen in ringing:
                screen.dismiss(False)  # the caller gave up, or the ring timed out
            sound = self._sound.pop(call.call_id, None)
            if sound is not None:
                sound[0].close()
                sound[1].close()
            if not any(isinstance(s, CallScreen) and s.call_id == call.call_id
                       for s in self.app.screen_stack):
                what = "Missed call" if not call.outgoing and call.answered_at is None \
                    else "Call ended"
                self.notify(f"{call.peer}: {call.reason or 'hung up'}", title=what)

    def _open_sound(self) -> tuple[MeteredSource, MeteredSink] | None:
        try:
            source, sink = self.app.audio()  # type: ignore[attr-defined]
        except Exception as exc:  # client.call.audio.AudioError (no device, no PortAudio)
            self.notify(f"{exc}\n{NO_SOUND_HINT}", title="No sound device",
                        severity="error", timeout=20)
            return None
        return MeteredSource(source), MeteredSink(sink)

    @work(group="call")
    async def answer_or_decline(self, call: CallView, answer: bool) -> None:
        if not answer:
            try:
                await self.messenger.decline_call(call.call_id)
            except MessengerError as exc:  # it ended meanwhile
                self.notify(str(exc), severity="warning")
            return
        sound = self._open_sound()
        if sound is None:
            await self.messenger.decline_call(call.call_id)
            return
        try:
            view = await self.messenger.answer_call(call.call_id, *sound)
        except MessengerError as exc:
            self.notify(str(exc), title="Not answered", severity="error")
            sound[0].close()
            sound[1].close()
            return
        self._sound[view.call_id] = sound
        self.app.push_screen(CallScreen(self.messenger, view, *sound))

    def transfer_changed(self, transfer: TransferView) -> None:
        """Update the conversation and the transfers view; announce what needs the user."""
        previous = self._transfer_states.get(transfer.transfer_id)
        self._transfer_states[transfer.transfer_id] = transfer.state
        if transfer.conversation == self.conversation:
            self.query_one(Conversation).show_transfer(transfer)
        for screen in self.app.screen_stack:
            if isinstance(screen, TransfersScreen):
                screen.show_transfer(transfer)
        if previous is transfer.state:
            return
        size = format_bytes(transfer.total_bytes)
        if transfer.state is TransferState.OFFERED and not transfer.outgoing:
            where = f" in @{transfer.group}" if transfer.group else ""
            self.notify(f"{transfer.peer}{where} wants to send you {transfer.title} ({size}) — "
                        "ctrl+j to accept or decline", title="File offered", timeout=20)
        elif transfer.state is TransferState.COMPLETE and previous is not None:
            where = ""
            if transfer.paths and not transfer.outgoing:
                more = len(transfer.paths) - 1
                where = f", saved as {transfer.paths[0]}" + (f" (+{more} more)" if more else "")
            verb = "sent to" if transfer.outgoing else "received from"
            self.notify(f"{transfer.title} ({size}) {verb} {transfer.peer}{where}",
                        title="Transfer complete")
        elif transfer.state is TransferState.FAILED and previous is not None:
            self.notify(f"{transfer.title}: {transfer.detail or 'failed'}",
                        title="Transfer failed", severity="error", timeout=10)
        elif transfer.state is TransferState.DECLINED and transfer.outgoing \
                and previous is not None:
            self.notify(f"{transfer.peer} declined {transfer.title}",
                        title="Transfer declined", severity="warning")

    # -- actions -----------------------------------------------------------------------

    @work(group="call")
    async def action_call(self) -> None:
        """Call the open conversation's peer, or go back to the call going on."""
        live = self.messenger.live_call()
        if live is not None:
            sound = self._sound.get(live.call_id)
            if sound is None:  # ringing here: the prompt is up
                return
            self.app.push_screen(CallScreen(self.messenger, live, *sound))
            return
        peer = self.peer
        if peer is None:
            self.notify("Open a conversation first.", severity="warning")
            return
        sound = self._open_sound()
        if sound is None:
            return
        try:
            view = await self.messenger.place_call(peer, *sound)
        except MessengerError as exc:
            self.notify(str(exc), title="Call failed", severity="error", timeout=10)
            sound[0].close()
            sound[1].close()
            return
        if view.state is CallState.ENDED:  # offline: a missed call waits for them
            self.notify(f"{peer} is offline: a missed call waits for them", title="Not reached")
            sound[0].close()
            sound[1].close()
            return
        self._sound[view.call_id] = sound
        self.app.push_screen(CallScreen(self.messenger, view, *sound))

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(list(self.BINDINGS) + list(self.app.BINDINGS)))

    def action_back(self) -> None:
        self.query_one(MessageInput).focus()

    def open_chosen(self, conversation: ConversationId) -> None:
        if conversation.kind is ConversationKind.GROUP:
            self.open_group(conversation.key)
        else:
            self.open_conversation(conversation.key)

    def action_cycle(self, step: int) -> None:
        listed = self.query_one(ContactList).conversations()
        if not listed:
            return
        index = listed.index(self.conversation) if self.conversation in listed else -step
        self.open_chosen(listed[(index + step) % len(listed)])

    def action_add_contact(self) -> None:
        def added(handle: str | None) -> None:
            if handle:
                self.add_contact(handle)

        self.app.push_screen(AddContactScreen(), added)

    @work(group="contacts")
    async def add_contact(self, handle: str) -> None:
        try:
            await self.messenger.add_contact(handle)
        except MessengerError as exc:
            self.notify(str(exc), title="Could not add contact", severity="error", timeout=8)
            return
        if self.messenger.stopped:
            return
        self.query_one(ContactList).set_contacts(self.messenger.contacts())
        self.open_conversation(handle)
        self.notify(f"{handle} added. Compare safety numbers with Ctrl+S.")

    def action_verify(self) -> None:
        peer = self.peer
        if peer is None:
            self.notify("Open a conversation first.", severity="warning")
            return
        try:
            number = self.messenger.safety_number(peer)
        except MessengerError as exc:
            self.notify(str(exc), severity="error")
            return
        verified = next((c.verified for c in self.messenger.contacts() if c.handle == peer), False)

        def done(result: bool | None) -> None:
            if result is not None:
                self.set_verified(peer, result)

        self.app.push_screen(VerifyScreen(peer, number, verified), done)

    @work(group="contacts")
    async def set_verified(self, peer: str, verified: bool) -> None:
        try:
            await self.messenger.set_verified(peer, verified)
        except MessengerError as exc:
            self.notify(str(exc), severity="error")
            return
        self.query_one(ContactList).set_contacts(self.messenger.contacts())
        self.notify(f"{peer} is {'verified' if verified else 'no longer verified'}.")

    def action_search(self) -> None:
        def opened(peer: str | None) -> None:
            if peer:
                self.open_conversation(peer)

        self.app.push_screen(SearchScreen(self.messenger), opened)

    def action_export(self) -> None:
        peer = self.peer
        if peer is None:
            self.notify("Open a conversation first.", severity="warning")
            return

        def chosen(fmt: str | None) -> None:
            if fmt:
                self.export_dir.mkdir(parents=True, exist_ok=True)
                path = self.export_dir / f"{peer}.{'json' if fmt == 'json' else 'txt'}"
                path.write_text(self.messenger.export(peer, fmt))
                self.notify(f"Exported to {path}", title="Export")

        self.app.push_screen(ExportScreen(peer), chosen)

    def action_toggle_otp(self) -> None:
        if self.peer:
            self.toggle_otp(self.peer)

    @work(group="mode")
    async def toggle_otp(self, peer: str) -> None:
        mode = "ratchet" if self.messenger.key_status(peer).mode == "otp" else "otp"
        try:
            await self.messenger.set_mode(peer, mode)
        except MessengerError as exc:
            self.notify(str(exc), severity="error")
            return
        self.refresh_keys()
        self.notify(f"Conversation with {peer} now uses {mode.upper()} mode.")

    def action_send_files(self) -> None:
        peer, group = self.peer, self.group
        if peer is None and group is None:
            self.notify("Open a conversation first.", severity="warning")
            return
        # A group file goes to "@<group ID>" (names need not be unique).
        target = peer if peer is not None else "@" + group.group_id  # type: ignore[union-attr]
        title = peer if peer is not None else "@" + group.name  # type: ignore[union-attr]

        def chosen(paths: list[str] | None) -> None:
            if paths:
                self.send_files(target, paths)

        self.app.push_screen(SendFilesScreen(title), chosen)

    @work(group="transfers")
    async def send_files(self, peer: str, paths: list[str]) -> None:
        try:
            transfer = await self.messenger.send_files(peer, paths)
        except MessengerError as exc:
            self.notify(str(exc), title="Not sent", severity="error", timeout=8)
            return
        self.transfer_changed(transfer)
        size = format_bytes(transfer.total_bytes)
        if transfer.group:
            self.notify(f"Sending {transfer.title} ({size}) to @{transfer.group}: uploaded "
                        "once, the relay keeps a copy for each member. Ctrl+J shows progress.",
                        title="Group file")
            return
        self.notify(f"Offered {transfer.title} ({size}) to "
                    f"{peer}; it starts when they accept. Ctrl+J shows progress.",
                    title="File offered")

    def action_transfers(self) -> None:
        if not any(isinstance(s, TransfersScreen) for s in self.app.screen_stack):
            self.app.push_screen(TransfersScreen(self.messenger))

    def action_toggle_keys(self) -> None:
        panel = self.query_one(KeyPanel)
        panel.display = not panel.display
