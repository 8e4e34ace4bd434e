"""Addresses and names the KME commands default to (a light module: the CLI's parser needs
them without importing the servers)."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT_A = 8441
DEFAULT_PORT_B = 8442
DEFAULT_LINK_PORT = 7441
KME_A = "kme-alice"
KME_B = "kme-bob"
SAE_A = "sae-alice"
SAE_B = "sae-bob"
# Seconds a key handed out by dec_keys stays re-servable to the same slave SAE (see
# keysource.kme.pool): long enough for a killed client to be restarted by hand.
DEFAULT_REDELIVERY_GRACE_S = 600.0
