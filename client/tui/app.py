"""The qsecret Textual application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerCancelled, WorkerFailed

from client.messenger.api import Messenger, ProfileGate
from client.tui.screens.chat import ChatScreen
from client.tui.screens.group_actions import GROUP_BINDINGS, GROUP_HELP
from client.tui.screens.onboarding import OnboardingScreen

if TYPE_CHECKING:
    from keysource.kme.network_status import NetworkSource

QUIT_GRACE_S = 10.0
AudioFactory = Callable[[], tuple[Any, Any]]


def sound_device() -> tuple[Any, Any]:
    """The microphone and the speaker (client.call.audio); AudioError when there are none."""
    from client.call import audio

    source = audio.MicrophoneSource()
    try:
        return source, audio.SpeakerSink()
    except audio.AudioError:
        source.close()
        raise


async def _finished(worker: Worker[None]) -> None:
    """Until ``worker`` ended, however it ended (its own handler reported any error)."""
    with contextlib.suppress(WorkerFailed, WorkerCancelled):
        await worker.wait()


class QsecretApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "qsecret"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("f2", "network", "QKD network", show=False),
    ]

    def __init__(
        self,
        gate: ProfileGate,
        export_dir: Path,
        messenger: Messenger | None = None,
        banner: str | None = None,
        audio: AudioFactory = sound_device,
        network: NetworkSource | None = None,
    ) -> None:
        super().__init__()
        self.network = network  # where the network screen (F2) gets its figures
        self.audio = audio  # where a call's sound comes from and goes to
        self.banner = banner
        self.gate = gate
        self.export_dir = export_dir
        self.messenger: Messenger | None = None
        self._unlocked = messenger

    def on_mount(self) -> None:
        if self.banner:
            self.notify(self.banner, title="qsecret demo", timeout=30)
        if self._unlocked is not None:
            self._opened(self._unlocked)
        else:
            self.push_screen(OnboardingScreen(self.gate), self._opened)

    def _opened(self, messenger: Messenger | None) -> None:
        if messenger is None:
            self.exit()
            return
        self.messenger = messenger
        # Pushed, not switched: this may run inside the onboarding screen's dismissal.
        self.push_screen(ChatScreen(messenger, self.export_dir))

    async def action_quit(self) -> None:
        """Messages typed before Ctrl+Q are sealed and queued first (for at most
        QUIT_GRACE_S: a KME that never answers must not keep the app open); then the
        messenger stops in order -- its tasks end before its store closes -- then the app."""
        sends = [w for w in self.workers if w.group == "send" and not w.is_finished]
        if sends:
            _, late = await asyncio.wait([asyncio.ensure_future(_finished(w)) for w in sends],
                                         timeout=QUIT_GRACE_S)
            for waiting in late:
                waiting.cancel()
            for worker in sends:
                worker.cancel()  # a no-op for those that finished
        if self.messenger is not None:
            await self.messenger.stop()
        self.exit()

    def action_network(self) -> None:
        """The network screen, on the open conversation's keys (once: F2 there goes back)."""
        from client.tui.screens.network import NetworkScreen

        if isinstance(self.screen, NetworkScreen) or self.messenger is None:
            return
        chat = next((s for s in self.screen_stack if isinstance(s, ChatScreen)), None)
        self.push_screen(NetworkScreen(self.network, self.messenger,
                                       chat.peer if chat is not None else None))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, ChatScreen):
            yield SystemCommand("Add contact", "Add a contact by handle", screen.action_add_contact)
            yield SystemCommand(
                "Verify safety number", "Compare safety numbers", screen.action_verify
            )
            yield SystemCommand("Search", "Search all conversations", screen.action_search)
            yield SystemCommand("Export conversation", "Text or JSON", screen.action_export)
            yield SystemCommand(
                "Toggle OTP mode", "One-time pad from QKD keys", screen.action_toggle_otp
            )
            yield SystemCommand("Toggle key panel", "Show or hide", screen.action_toggle_keys)
            yield SystemCommand(
                "Send files", "Offer files or folders to this contact", screen.action_send_files
            )
            yield SystemCommand(
                "File transfers", "Progress; accept or decline offers", screen.action_transfers
            )
            yield SystemCommand("QKD network", "Links, nodes and the path of these keys",
                                self.action_network)
            yield SystemCommand("Help", "All key bindings", screen.action_help)
            for binding in GROUP_BINDINGS:
                yield SystemCommand(binding.description, GROUP_HELP[binding.action],
                                    getattr(screen, f"action_{binding.action}"))
            if self.messenger is not None:
                for contact in self.messenger.contacts():
                    yield SystemCommand(
                        f"Open chat with {contact.handle}",
                        "Switch conversation",
                        lambda h=contact.handle: screen.open_conversation(h),
                    )
                for group in self.messenger.group_list():
                    yield SystemCommand(
                        f"Open group #{group.name}", "Switch conversation",
                        lambda g=group.group_id: screen.open_group(g),
                    )
