# vm-tests/scenarios/limits.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/limits.py
