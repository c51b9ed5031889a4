# vm-tests/scenarios/privileges.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/privileges.py
