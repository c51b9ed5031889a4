# nixpkgs, stood in for: `import nixpkgs { system; config; }` gives pkgs.nix's set, and this
# directory with `lib` (see flake.nix) is the flake input `nixpkgs`. The lib/ tree is named
# by NANOCLAW_NIXPKGS_LIB (so this needs an impure evaluation, as nix-instantiate's).
{
  system ? "x86_64-linux",
  config ? { },
  ...
}:
import ./pkgs.nix {
  lib = import ./lib.nix (builtins.getEnv "NANOCLAW_NIXPKGS_LIB");
  inherit system config;
}
