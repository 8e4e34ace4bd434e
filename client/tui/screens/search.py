"""Search every conversation; Enter opens the conversation of the selected hit."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from client.messenger.api import Messenger
from client.tui.widgets.conversation import render_message


class SearchScreen(Screen[str | None]):
    BINDINGS = [("escape", "dismiss(None)", "Back")]

    def __init__(self, messenger: Messenger) -> None:
        super().__init__()
        self.messenger = messenger

    def compose(self) -> ComposeResult:
        with Vertical(id="search"):
            yield Static("Search all conversations", classes="title")
            yield Input(placeholder="words to find", id="query")
            yield OptionList(id="hits")
            yield Static("", id="count")
        yield Footer()

    @on(Input.Changed, "#query")
    def run_search(self, event: Input.Changed) -> None:
        hits = self.messenger.search(event.value) if event.value.strip() else []
        options = self.query_one("#hits", OptionList)
        options.clear_options()
        options.add_options(
            Option(render_message(hit), id=f"{i}:{hit.peer}") for i, hit in enumerate(hits)
        )
        self.query_one("#count", Static).update(f"{len(hits)} messages")

    @on(Input.Submitted, "#query")
    def focus_hits(self) -> None:
        hits = self.query_one("#hits", OptionList)
        if hits.option_count:
            hits.highlighted = 0
        hits.focus()

    @on(OptionList.OptionSelected, "#hits")
    def open_hit(self, event: OptionList.OptionSelected) -> None:
        self.dismiss((event.option.id or ":").split(":", 1)[1])
