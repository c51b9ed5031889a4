"""Where a secret of the configuration lives: a file, or a systemd credential
(LoadCredential=, read from $CREDENTIALS_DIRECTORY). The value is read when needed and
never kept, shown in a repr or carried by an error."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nanoclaw.broker.config_reader import ConfigError


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: a file, or a systemd credential. The value is never kept."""

    key: str  # the config key it came from, for error messages
    file: Path | None
    credential: str | None

    def path(self, env: Mapping[str, str] = os.environ) -> Path:
        if self.file is not None:
            return self.file
        assert self.credential is not None  # the parser sets exactly one of the two
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                self.key,
                f"systemd credential {self.credential!r} is read from $CREDENTIALS_DIRECTORY, "
                "which is not set (give the unit LoadCredential=, or name a file instead)",
            )
        return Path(directory) / self.credential

    def read(self, env: Mapping[str, str] = os.environ) -> str:
        path = self.path(env)
        # `from None` everywhere: a decode error's context would carry the secret's bytes.
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                self.key, f"cannot read secret {path}: {exc.strerror or type(exc).__name__}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(self.key, f"secret {path} is not UTF-8 text") from None
        if not value:
            raise ConfigError(self.key, f"secret {path} is empty")
        return value

    def __repr__(self) -> str:
        return f"SecretRef({self.key}={str(self.file or self.credential)!r})"
