# A stand-in for nixpkgs' package set, for evaluating the flake, the module and the VM
# tests where nixpkgs cannot be fetched. Every package and every file is a real
# `derivation`: what goes into its attributes (strings with context) is its dependency, so
# a dependency that is missing, or that forms a cycle, fails here as it would with
# nixpkgs. Nothing here can be built: each builder fails at once. Only the functions the
# project calls are here; calling another fails with "attribute ... missing".
{
  lib,
  system ? "x86_64-linux",
  # nixpkgs' `config`: allowUnfreePredicate is the one this project sets.
  config ? { },
}:
let
  inherit (lib) types;

  # A derivation Nix can instantiate (and so compute its .drvPath) but never build.
  # Attribute sets (meta, passthru) cannot be derivation attributes: they are kept
  # beside it, as nixpkgs' mkDerivation keeps them.
  make =
    name: attrs:
    let
      plain = lib.filterAttrs (_: value: !(builtins.isAttrs value) || lib.isDerivation value) (
        removeAttrs attrs [ "passthru" ]
      );
      drv = derivation (
        {
          inherit name system;
          builder = "/bin/sh";
          args = [
            "-c"
            "echo 'a stand-in of tests/nix: never built' >&2; exit 1"
          ];
        }
        // plain
      );
    in
    drv // (attrs.passthru or { }) // lib.optionalAttrs (attrs ? meta) { inherit (attrs) meta; };

  package =
    pname:
    make "${pname}-1.0" {
      inherit pname;
      version = "1.0";
    }
    // {
      inherit pname;
      version = "1.0";
      meta.mainProgram = pname;
    };

  # nixpkgs refuses unfree packages unless config allows them: so does this.
  unfreeAllowed = pkg: (config.allowUnfree or false) || (config.allowUnfreePredicate or (_: false)) pkg;
  checkMeta =
    drv:
    let
      licenses = lib.toList (drv.meta.license or [ ]);
    in
    if lib.any (license: !(license.free or true)) licenses && !unfreeAllowed drv then
      throw "Package ‘${drv.name}’ has an unfree license, refusing to evaluate (nixpkgs config.allowUnfreePredicate)."
    else
      drv;

  writeTextFile =
    {
      name,
      text,
      executable ? false,
      destination ? "",
    }:
    make name {
      inherit text executable destination;
      passAsFile = [ "text" ];
    };

  runCommandWith =
    name: env: buildCommand:
    make name (
      env
      // {
        inherit buildCommand;
        nativeBuildInputs = env.nativeBuildInputs or [ ];
      }
    );

  # pkgs/pkgs-lib/formats.nix: the value types and a generator per format.
  formats =
    let
      valueType =
        description: nullable:
        let
          atom = types.oneOf [
            types.bool
            types.int
            types.float
            types.str
            types.path
            (types.attrsOf self)
            (types.listOf self)
          ];
          self = (if nullable then types.nullOr atom else atom) // {
            inherit description;
          };
        in
        self;
      format = description: nullable: tool: {
        type = valueType description nullable;
        generate =
          name: value:
          make name {
            value = builtins.toJSON value;
            passAsFile = [ "value" ];
            nativeBuildInputs = [ tool ];
          };
      };
    in
    {
      json = { }: format "JSON value" true pkgs.jq;
      toml = { }: format "TOML value" false pkgs.remarshal;
    };

  python3 = make "python3-3.12.8" { } // {
    pname = "python3";
    version = "3.12.8";
    pythonVersion = "3.12";
    sitePackages = "lib/python3.12/site-packages";
    interpreter = "${python3}/bin/python3.12";
    withPackages =
      choose:
      make "python3-3.12.8-env" {
        paths = [ python3 ] ++ choose python3Packages;
      };
    pkgs = python3Packages;
  };

  # buildPythonPackage and buildPythonApplication: `dependencies` become
  # propagatedBuildInputs, as in nixpkgs' mkPythonDerivation.
  buildPython =
    kind: args:
    let
      deps = args.dependencies or [ ] ++ args.propagatedBuildInputs or [ ];
      drv = make "python3.12-${args.pname}-${args.version}" (
        removeAttrs args [
          "dependencies"
          "optional-dependencies"
          "build-system"
          "pythonImportsCheck"
        ]
        // {
          inherit kind;
          propagatedBuildInputs = deps;
          nativeBuildInputs = args.build-system or [ ] ++ args.nativeBuildInputs or [ ];
          pythonImportsCheck = args.pythonImportsCheck or [ ];
        }
      );
    in
    checkMeta (
      drv
      // {
        inherit (args) pname version;
        propagatedBuildInputs = deps;
        optional-dependencies = args.optional-dependencies or { };
      }
    );

  pythonPackage = pname: buildPython "package" {
    inherit pname;
    version = "1.0";
  };

  python3Packages =
    lib.genAttrs [
      "aiohttp"
      "anyio"
      "croniter"
      "dbus-next"
      "jsonschema"
      "markdown-it-py"
      "mcp"
      "pillow"
      "pytest"
      "pytest-asyncio"
      "setuptools"
      "sniffio"
    ] pythonPackage
    // {
      # nixpkgs' matrix-nio declares its encryption extra (the names do not matter here).
      matrix-nio = pythonPackage "matrix-nio" // {
        optional-dependencies.e2e = map pythonPackage [
          "cachetools"
          "peewee"
          "vodozemac"
        ];
      };
      python = python3;
      buildPythonPackage = buildPython "package";
      buildPythonApplication = buildPython "application";
      toPythonModule = drv: drv // { pythonModule = python3; };
      callPackage = lib.callPackageWith (pkgs // python3Packages);
    };

  pkgs =
    lib.genAttrs [
      "bashInteractive"
      "cacert"
      "coreutils"
      "curl"
      "findutils"
      "git"
      "glibc"
      "gnugrep"
      "gnused"
      "iana-etc"
      "jq"
      "matrix-synapse"
      "mypy"
      "netcat"
      "nix"
      "procps"
      "remarshal"
      "ripgrep"
      "ruff"
      "shadow"
      "systemd"
      "tzdata"
      "util-linux"
    ] package
    // {
      inherit
        lib
        formats
        python3
        python3Packages
        writeTextFile
        ;
      stdenv = {
        hostPlatform = {
          inherit system;
          isLinux = true;
        };
        # The loader of nixpkgs' glibc, as its compilers name it in every program.
        cc.bintools.dynamicLinker = "${pkgs.glibc}/lib/ld-linux-x86-64.so.2";
        shell = "${pkgs.bashInteractive}/bin/bash";
      };
      runtimeShell = "${pkgs.bashInteractive}/bin/bash";
      path = ./.;

      callPackage = lib.callPackageWith pkgs;
      fetchurl =
        { url, hash }:
        make (baseNameOf url) {
          inherit url;
          outputHashMode = "flat";
          outputHashAlgo = "sha256";
          outputHash = hash;
        };
      writeText = name: text: writeTextFile { inherit name text; };
      writeShellScript =
        name: text:
        writeTextFile {
          inherit name;
          executable = true;
          text = "#!${pkgs.runtimeShell}\n${text}";
        };
      runCommand = runCommandWith;
      runCommandLocal = runCommandWith;
      # pkgs/build-support/closure-info.nix: the closure of rootPaths, from the reference
      # graph Nix exports to the builder.
      closureInfo =
        { rootPaths }:
        make "closure-info" {
          exportReferencesGraph = lib.concatLists (
            lib.imap0 (index: path: [
              "closure-${toString index}"
              path
            ]) rootPaths
          );
        };
      # replaceVars: @name@ in a file becomes the value (substitute --subst-var-by).
      replaceVars =
        src: replacements:
        make (baseNameOf src) (
          {
            inherit src;
            replacementNames = lib.attrNames replacements;
          }
          // replacements
        );
      mkShell = args: make (args.name or "nix-shell") (removeAttrs args [ "name" ]);
      testers.runNixOSTest = import ./nixos-test.nix { inherit lib pkgs; };
    };
in
pkgs
