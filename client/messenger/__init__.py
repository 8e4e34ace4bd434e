"""The messenger: what the TUI and the CLI drive (client.messenger.api is their only door).

service.py wires small parts that know each other only through narrow interfaces:
sessions.py (seal and open, a lock per conversation), outbox.py and inbox.py (the relay's
side of messages), contacts.py, history.py, key_status.py, prekeys.py, transfers.py (file
transfers over client.transfer.driver), relay_link.py and qkd_source.py (the I/O), and
lifecycle.py (what ``stop`` ends, in order, before the store closes).
"""
