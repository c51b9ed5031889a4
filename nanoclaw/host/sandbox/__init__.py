"""The host's side of the broker: the client of its socket, the gateway every tool call
passes, and the sandboxed tools the model is offered (bash, read, write, ...)."""
