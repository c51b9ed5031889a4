"""What runs as root: the sandbox broker (nanoclaw-sandboxd).

Everything it imports is in this package, and nothing else of nanoclaw's is (a test
loads each entry point in a fresh interpreter to hold that): the policy and its reader,
the compiler from a policy and a request to a unit's properties, D-Bus, the start-up
probes, the checks of mount sources, and the walks of directories tools write. The host
imports from here (the protocol, the policy's rules); never the other way round.
"""
