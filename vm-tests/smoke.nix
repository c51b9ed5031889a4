# vm-tests/scenarios/smoke.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/smoke.py
