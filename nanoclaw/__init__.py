"""nanoclaw: a personal AI agent in Matrix rooms, run as a hardened systemd appliance."""

__version__ = "0.1.0"
