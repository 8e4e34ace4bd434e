"""qsecret client: protocol core (sans-I/O), local store, transfers, calls, TUI and CLI."""

__version__ = "0.1.0"
