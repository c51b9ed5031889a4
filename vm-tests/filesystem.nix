# vm-tests/scenarios/filesystem.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/filesystem.py
