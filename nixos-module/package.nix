# nanoclaw from pyproject.toml with nixpkgs' Python packages, and the Claude Agent SDK
# from its published wheel (claude-agent-sdk.nix), which nixpkgs lacks in this form.
{
  lib,
  python3Packages,
}:
let
  project = (lib.importTOML ../pyproject.toml).project;
  claude-agent-sdk = python3Packages.callPackage ./claude-agent-sdk.nix { };

  # pyproject.toml's dependencies, each by its nixpkgs attribute (the normalised name
  # PEP 503 gives it), with the extras it names: "matrix-nio[e2e]>=0.26" is matrix-nio
  # and matrix-nio.optional-dependencies.e2e. Versions are checked when the package is
  # built (pythonRuntimeDepsCheck).
  requirement =
    text:
    let
      parts = builtins.match "([A-Za-z0-9][A-Za-z0-9._-]*)(\\[([A-Za-z0-9_,-]+)])?.*" text;
      name = lib.toLower (lib.concatStringsSep "-" (lib.filter builtins.isString (builtins.split "[-_.]+" (lib.head parts))));
      extras = if lib.elemAt parts 2 == null then [ ] else lib.splitString "," (lib.elemAt parts 2);
      package = if name == "claude-agent-sdk" then claude-agent-sdk else python3Packages.${name};
    in
    [ package ] ++ lib.concatMap (extra: package.optional-dependencies.${extra}) extras;
in
python3Packages.buildPythonApplication {
  pname = "nanoclaw";
  inherit (project) version;
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

  dependencies = lib.concatMap requirement project.dependencies;

  pythonImportsCheck = [
    "nanoclaw.cli"
    "nanoclaw.broker.sandboxd"
  ];

  passthru = {
    inherit claude-agent-sdk;
    # The CLI the SDK bundles, through its loader (claude-agent-sdk.nix): what the broker
    # runs in each group's agent unit (--agent-cli), named here so that it does not depend
    # on what the broker's Python environment finds.
    agentCli = "${claude-agent-sdk}/${python3Packages.python.sitePackages}/claude_agent_sdk/_bundled/claude";
  };

  meta = {
    description = "A personal AI agent in Matrix rooms, run as a hardened systemd appliance";
    mainProgram = "nanoclaw";
    platforms = [ "x86_64-linux" ];
  };
}
