# Every VM isolation scenario as a NixOS test, keyed by its name, for a flake's
#   checks.x86_64-linux = import ./vm-tests { inherit pkgs self; };
# where pkgs is nixpkgs for x86_64-linux and self the flake (its nixosModules.default and
# packages). Each test comes from its wrapper NAME.nix: a scenario without one fails here.
# The scenarios of scenarios/ run on the Debian node too; those of nixos/ on NixOS only.
{
  pkgs,
  self,
  runNixOSTest ? pkgs.testers.runNixOSTest,
}:
let
  inherit (pkgs) lib;
  # vm-tests/scenarios/*.py without the helpers (_*.py), as vm-tests/driver.py finds them.
  isScenario = file: type: type == "regular" && lib.hasSuffix ".py" file && !lib.hasPrefix "_" file;
  scenariosIn =
    directory:
    map (lib.removeSuffix ".py") (
      builtins.attrNames (lib.filterAttrs isScenario (builtins.readDir directory))
    );
  names = scenariosIn ./scenarios ++ scenariosIn ./nixos;
in
lib.genAttrs names (name: import (./. + "/${name}.nix") { inherit pkgs self runNixOSTest; })
