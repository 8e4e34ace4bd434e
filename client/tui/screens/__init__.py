"""Screens of the chat TUI."""
