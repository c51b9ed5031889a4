{
  description = "nanoclaw: a personal AI agent in Matrix rooms, run as a hardened systemd appliance";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      inherit (nixpkgs) lib;
      # The SDK's wheel bundles the Claude Code CLI, which is not free software.
      allowClaude = pkg: (pkg.pname or (lib.getName pkg)) == "claude-agent-sdk";
      pkgs = import nixpkgs {
        inherit system;
        config.allowUnfreePredicate = allowClaude;
      };
    in
    {
      packages.${system} = {
        default = self.packages.${system}.nanoclaw;
        nanoclaw = pkgs.callPackage ./nixos-module/package.nix { };
        # `nix run .#vm`: a NixOS VM with the module, two groups and a login as root.
        vm = self.nixosConfigurations.demo.config.system.build.vm;
      };

      nixosModules.default = import ./nixos-module;

      # nix flake check: the package (its runtime dependency and import checks) and every
      # VM scenario (vm-tests/) as a NixOS test, whose node builds the policy file.
      checks.${system} = import ./vm-tests { inherit pkgs self; } // {
        package = self.packages.${system}.default;
      };

      nixosConfigurations.demo = nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [
          self.nixosModules.default
          ./nixos-module/demo.nix
          {
            nixpkgs.pkgs = pkgs;
            services.nanoclaw.package = self.packages.${system}.default;
          }
        ];
      };

      apps.${system}.vm = {
        type = "app";
        program = "${self.packages.${system}.vm}/bin/run-nanoclaw-demo-vm";
      };

      devShells.${system}.default = pkgs.mkShell {
        inputsFrom = [ self.packages.${system}.default ];
        packages = with pkgs; [
          ruff
          mypy
          nix
          python3Packages.pytest
          python3Packages.pytest-asyncio
        ];
      };
    };
}
