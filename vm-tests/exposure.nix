# vm-tests/scenarios/exposure.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/exposure.py
