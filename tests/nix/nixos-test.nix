# A stand-in for nixpkgs' testers.runNixOSTest: each node is evaluated as a NixOS system
# (nixos.nix), and the test is a derivation that depends on every node's system and holds
# the test script, as the real test's driver does. It runs nothing.
{ lib, pkgs }:
test:
let
  # The nodes get the test's pkgs, whatever their nixpkgs.config, as in nixpkgs' tests.
  nixosSystem = import ./nixos.nix {
    inherit lib;
    pkgsFor = _: pkgs;
  };
  nodes = lib.mapAttrs (
    name: node:
    (nixosSystem {
      modules = [
        node
        { networking.hostName = lib.mkDefault name; }
      ];
    }).config
  ) test.nodes;
  testScript =
    if builtins.isFunction test.testScript then test.testScript { inherit nodes; } else test.testScript;
in
derivation {
  name = "vm-test-run-${test.name}";
  inherit (pkgs.stdenv.hostPlatform) system;
  builder = "/bin/sh";
  args = [
    "-c"
    "exit 1"
  ];
  nodes = map (node: node.system.build.toplevel) (lib.attrValues nodes);
  inherit testScript;
}
// {
  inherit (test) name;
  inherit nodes testScript;
}
