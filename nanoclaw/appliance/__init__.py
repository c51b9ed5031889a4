"""The Quickstart: `scripts/up` brings the appliance up on a plain Debian or Ubuntu
machine (an embedded Synapse, and a systemd-nspawn machine running the units of units/),
and `nanoclaw chat` talks to it. Nothing here runs in a real installation.
"""
