"""The credential the host puts on model requests: an API key, or the OAuth token of a
Claude subscription (`claude setup-token`).

Each goes on a request the way the Claude Code CLI puts it there when it holds it itself
(read in the bundled CLI 2.1.337): an API key as `x-api-key`; a subscription token as
`Authorization: Bearer`, with the `oauth-2025-04-20` beta among its `anthropic-beta`s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict

from nanoclaw.host.config import ModelConfig

OAUTH_BETA = "oauth-2025-04-20"
# `claude setup-token` prints sk-ant-oat01-...; API keys are sk-ant-api03-...
TOKEN_PREFIX = "sk-ant-oat"
# What to do once Anthropic refuses the token (it expired, or was revoked).
RENEW_TOKEN = (
    "run `claude setup-token` on a machine with a browser, put the new token in the file "
    "or credential that model.oauth_token_file or model.oauth_token_credential names, and "
    "restart the host (`systemctl restart nanoclaw`)"
)


@dataclass(frozen=True)
class ModelCredential:
    secret: str = field(repr=False)
    subscription: bool  # a Claude subscription's OAuth token, not an API key

    def put_on(self, headers: CIMultiDict[str]) -> None:
        """Set on an upstream request whose client credentials were removed."""
        if not self.subscription:
            headers["x-api-key"] = self.secret
            return
        headers["authorization"] = f"Bearer {self.secret}"
        sent = [
            beta.strip()
            for value in headers.getall("anthropic-beta", [])
            for beta in value.split(",")
        ]
        # The CLI's own betas stay (it sends them for a key too), each once.
        headers["anthropic-beta"] = ",".join(dict.fromkeys([*filter(None, sent), OAUTH_BETA]))

    def shape_problem(self) -> str | None:
        """Why the secret is not what its key says it is, if it looks so."""
        if self.subscription and not self.secret.startswith(TOKEN_PREFIX):
            return f"the subscription token does not start with {TOKEN_PREFIX}"
        if not self.subscription and self.secret.startswith(TOKEN_PREFIX):
            return "the API key is a subscription token"
        return None


def model_credential(
    model: ModelConfig, env: Mapping[str, str] = os.environ
) -> ModelCredential | None:
    """The configured token or key, else the environment's ANTHROPIC_API_KEY."""
    if model.oauth_token is not None:
        return ModelCredential(model.oauth_token.read(env), subscription=True)
    key = model.api_key.read(env) if model.api_key else env.get("ANTHROPIC_API_KEY")
    return ModelCredential(key, subscription=False) if key else None
