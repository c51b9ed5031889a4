#!@shell@
# The Claude Code CLI the Agent SDK bundles, started by nixpkgs' glibc loader. The program
# names /lib64/ld-linux-x86-64.so.2 as its interpreter, which NixOS has only with nix-ld,
# and its bytes must stay as published (claude-agent-sdk.nix). Run by the loader, it finds
# its code where it is mapped in memory, so nothing else changes.
exec @loader@ @cli@ "$@"
