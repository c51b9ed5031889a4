"""The scripted model of the NixOS node (node.nix), for the conversation scenario: asked to
"run it", it calls the sandbox's bash tool, then answers with what the tool printed.

Usage: model.py URL_FILE (where the server's URL goes once it listens)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from tests.support.scripted_model import ModelRequest, ScriptedModel, ToolCall

# Who ran it and where: the group's tool user, in the group's folder.
COMMAND = "id -un; pwd"


def reply(request: ModelRequest) -> str | ToolCall:
    if request.tool_results:
        return f"the tool printed: {request.tool_results[-1]['content']}"
    if "run it" in request.last_user_text:
        return ToolCall("mcp__nanoclaw__bash", {"command": COMMAND})
    return "ask me to run it"


def main() -> None:
    model = ScriptedModel(reply).start()
    Path(sys.argv[1]).write_text(model.url)
    threading.Event().wait()


if __name__ == "__main__":
    main()
