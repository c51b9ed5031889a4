# vm-tests/nixos/conversation.py as a NixOS test (see nixos-test.nix); NixOS only.
args: import ./nixos-test.nix args ./nixos/conversation.py
