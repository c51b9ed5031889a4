# nanoclaw from pyproject.toml with nixpkgs' Python packages, and the Claude Agent SDK
# from its published wheel (claude-agent-sdk.nix), which nixpkgs lacks in this form.
{
  lib,
  python3Packages,
}:
let
  claude-agent-sdk = python3Packages.callPackage ./claude-agent-sdk.nix { };
in
python3Packages.buildPythonApplication {
  pname = "nanoclaw";
  version = (lib.importTOML ../pyproject.toml).project.version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../nanoclaw
    ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies =
    with python3Packages;
    [
      claude-agent-sdk
      matrix-nio
      aiohttp
      markdown-it-py
      dbus-next
    ]
    ++ matrix-nio.optional-dependencies.e2e;

  pythonImportsCheck = [
    "nanoclaw.cli"
    "nanoclaw.sandboxd"
    "nanoclaw.port_filter"
  ];

  passthru = { inherit claude-agent-sdk; };

  meta = {
    description = "A personal AI agent in Matrix rooms, run as a hardened systemd appliance";
    mainProgram = "nanoclaw";
    platforms = [ "x86_64-linux" ];
  };
}
