# vm-tests/scenarios/mounts.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/mounts.py
