"""The agent host (nanoclaw.service): unprivileged, and talking to Matrix, the model and
the broker. Matrix sync, the store, the router and the per-group agent sessions, the
scheduler, the agent's tools, and the credential and egress proxies; `sandbox/` is its
side of the broker's socket.
"""
