# What tests/test_nix_harness.py and tests/test_nixos_module.py evaluate: the flake's
# outputs with nixpkgs stood in for by this directory (default.nix, pkgs.nix, nixos.nix),
# and every file and unit a target produces, forced down to its .drvPath. A .drvPath needs
# the .drvPath of every dependency, so a cycle or a missing dependency fails here.
#   package  the package, the Claude Agent SDK and the dev shell
#   demo     nixosConfigurations.demo (nixos-module/demo.nix) and its VM
#   checks   every NixOS test of vm-tests/ (whose node is vm-tests/node.nix)
#   example  a NixOS system of the module and the configuration file `example`; with
#            inspect = true, what the module renders instead, failed assertions included
{
  repo,
  target,
  example ? null,
  inspect ? false,
}:
let
  lib = import ./lib.nix (builtins.getEnv "NANOCLAW_NIXPKGS_LIB");
  pkgsFor = config: import ./. { inherit config; };
  # The flake input: `import nixpkgs { ... }` reads ./default.nix, and lib.nixosSystem.
  nixpkgs = {
    outPath = ./.;
    lib = lib // {
      nixosSystem = import ./nixos.nix { inherit lib pkgsFor; };
    };
  };
  flake = import (/. + repo + "/flake.nix");
  self = flake.outputs { inherit self nixpkgs; };
  system = "x86_64-linux";

  # The derivation a value stands for: its own, or the one its string context names.
  drvOf =
    value:
    if lib.isDerivation value then
      value.drvPath
    # A file of the repository: its copy in the store, as "${source}" makes it there.
    else if builtins.isPath value then
      "${value}"
    else
      let
        context = builtins.attrNames (builtins.getContext (toString value));
      in
      if context == [ ] then toString value else lib.head context;

  filesOf =
    config:
    lib.mapAttrs' (_: entry: lib.nameValuePair "/etc/${entry.target}" (drvOf entry.source)) (
      lib.filterAttrs (_: entry: entry.enable) config.environment.etc
    )
    // lib.mapAttrs' (name: file: lib.nameValuePair "unit ${name}" file.drvPath) config.system.build.units
    // lib.mapAttrs' (
      name: file: lib.nameValuePair "tmpfiles ${name}" file.drvPath
    ) config.system.build.tmpfiles
    // {
      "system.build.etc" = config.system.build.etc.drvPath;
      "system.build.toplevel" = config.system.build.toplevel.drvPath;
    };

  # The policy file as built: the JSON it starts from, and what the build adds to it.
  policyOf =
    config:
    let
      file = config.environment.etc."nanoclaw/policy.json".source;
    in
    {
      inherit (file) base;
      # The closures its build command reads (their .drv paths, from its string context).
      closures = lib.filter (lib.hasSuffix "-closure-info.drv") (
        builtins.attrNames (builtins.getContext file.buildCommand)
      );
    };

  exampleSystem = nixpkgs.lib.nixosSystem {
    inherit system;
    modules = [
      self.nixosModules.default
      (/. + example)
      # As the README's flake does.
      { services.nanoclaw.package = lib.mkDefault self.packages.${system}.default; }
    ];
  };

  inspected =
    let
      inherit (exampleSystem) config;
      cfg = config.services.nanoclaw;
      failed = map (assertion: assertion.message) (
        lib.filter (assertion: !assertion.assertion) config.assertions
      );
    in
    if failed != [ ] then
      { inherit failed; }
    else
      {
        inherit failed;
        inherit (config) warnings users;
        # Store paths of packages the examples name, to compare the policy's `path` with,
        # and of the system's systemd (systemd.package), whose programs the units name.
        paths = lib.mapAttrs (_: package: "${package}") {
          inherit (config.nixpkgs.pkgs) git ripgrep;
          systemd = config.systemd.package;
        };
        inherit (cfg) settings policy;
        configFile = "${cfg.configFile}";
        package = "${cfg.package}";
        # The Agent SDK the package's Python environment has, and the derivations each
        # service's ExecStart= depends on (its string context).
        sdk =
          let
            sdk = cfg.package.claude-agent-sdk or null;
          in
          if sdk == null then
            null
          else
            {
              path = "${sdk}";
              inherit (sdk) drvPath;
              dependency = lib.elem sdk cfg.package.propagatedBuildInputs;
            };
        execStartNeeds = lib.mapAttrs (
          _: service: builtins.attrNames (builtins.getContext (toString (service.serviceConfig.ExecStart or "")))
        ) config.systemd.services;
        policyFile = policyOf config;
        etc = lib.mapAttrs (_: entry: {
          inherit (entry) mode;
          source = "${entry.source}";
        }) config.environment.etc;
        systemPackages = map toString config.environment.systemPackages;
        services = lib.mapAttrs (_: service: {
          inherit (service)
            after
            wants
            requires
            partOf
            wantedBy
            unitConfig
            serviceConfig
            ;
          path = map toString service.path;
        }) config.systemd.services;
        sockets = config.systemd.sockets;
        tmpfiles = config.systemd.tmpfiles.settings;
        units = lib.mapAttrs (_: file: file.text) config.system.build.units;
      };

  targets = {
    package =
      let
        package = self.packages.${system}.default;
      in
      {
        files = {
          package = package.drvPath;
          "claude-agent-sdk" = package.claude-agent-sdk.drvPath;
          devShell = self.devShells.${system}.default.drvPath;
        };
        dependencies = map (dependency: dependency.pname) package.propagatedBuildInputs;
      };
    demo = {
      files = filesOf self.nixosConfigurations.demo.config // {
        "packages.vm" = self.packages.${system}.vm.drvPath;
        "apps.vm" = drvOf self.apps.${system}.vm.program;
      };
      policy = policyOf self.nixosConfigurations.demo.config;
    };
    checks =
      let
        checks = self.checks.${system};
        tests = lib.filterAttrs (_: check: check ? testScript) checks;
        # Every test has the same node `machine`.
        node = (lib.head (lib.attrValues tests)).nodes.machine;
      in
      {
        files = lib.mapAttrs' (name: check: lib.nameValuePair "checks.${name}" check.drvPath) checks // filesOf node;
        policy = policyOf node;
        testScripts = lib.mapAttrs (_: test: test.testScript) tests;
      };
    example =
      if inspect then
        inspected
      else
        {
          files = filesOf exampleSystem.config;
          policy = policyOf exampleSystem.config;
        };
  };
in
targets.${target}
