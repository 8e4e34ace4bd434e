"""Reusable widgets of the chat TUI."""
