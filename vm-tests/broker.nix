# vm-tests/scenarios/broker.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/broker.py
