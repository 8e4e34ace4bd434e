"""The messenger service: what the TUI and the CLI drive (relay, KME, sessions, store)."""
