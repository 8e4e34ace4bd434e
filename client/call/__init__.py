"""Encrypted calls: SFrame-sealed Opus frames keyed from QKD + ML-KEM + X25519 (issue 17)."""
