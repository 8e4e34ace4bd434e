"""The Textual chat TUI: screens/, widgets/ and app.tcss, driven by a Messenger."""
