"""Groups: sender keys carried by the pairwise sessions, and membership every member checks.

- ``sender_keys``: each member's chain and signing key per group (Signal's sender keys).
- ``roster``: signed membership changes and the deterministic fold every member computes.
"""
