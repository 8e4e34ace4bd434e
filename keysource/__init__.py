"""Where qsecret's key material comes from: PQ/classical primitives, the combiner, QKD and KMEs."""
