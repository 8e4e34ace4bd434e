"""The QKD network: topologies of KME nodes and links, routes, and key relay by trusted nodes."""
