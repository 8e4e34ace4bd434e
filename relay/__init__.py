"""qsecret websocket relay: sees only sealed envelopes."""
