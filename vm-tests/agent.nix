# vm-tests/scenarios/agent.py as a NixOS test (see nixos-test.nix).
args: import ./nixos-test.nix args ./scenarios/agent.py
