# vm-tests/scenarios/egress.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/egress.py
