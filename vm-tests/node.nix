# The NixOS node of the VM isolation scenarios: what vm-tests/node/setup.sh and
# vm-tests/node/policy.json give the Debian node by hand, declared through services.nanoclaw,
# and what the NixOS-only conversation scenario needs besides: a Synapse, a scripted model
# and nanoclaw.service itself, all started with nanoclaw.service (never at boot: the host
# would hold the egress proxy's socket that `nanoclaw exec` serves in the other scenarios).
#
# This is the one place that names the options the scenarios need from the NixOS module
# (self.nixosModules.default), which must provide:
#   services.nanoclaw.enable, .package
#   .settings                  RFC 42: matrix.{homeserver, user_id, owners}, model, ...
#   .accessTokenFile, .apiKeyFile    outside the store, handed over with LoadCredential=
#   .dataDir, .protectedPaths  the policy's data_dir and protected_paths
#   .defaults.limits, .groups.<name>.limits
#       {memoryMaxBytes, tasksMax, cpuQuotaPercent, wallSeconds, outputBytes, ...}
#   .groups.<name>.{uid, main, roomId, mounts = [{host, sandbox, writable}],
#       egress.{cidrs, domains}, packages}   packages: the commands a tool unit finds on PATH
#   .defaults.agent, .groups.<name>.agent   the policy's agent sections:
#       {uid (groups only), memoryMaxBytes, tasksMax, cpuWeight}
# and from them: /etc/nanoclaw/policy.json and config.toml; users nanoclaw (group nanoclaw:
# the broker's clients), nanoclaw-tool-<name> (uid = gid = groups.<name>.uid) and
# nanoclaw-agent-<name> (uid = gid = groups.<name>.agent.uid); each
# group's folder under dataDir/groups; every unit of units/ with its name and hardening
# (nanoclaw-sandboxd.socket enabled; the broker given systemd-socket-proxyd for the relays
# of groups with domains, and the socket of the host's egress proxy, settings.egress_socket,
# where they lead); the package's commands on PATH. A tool unit finds its group's
# packages first on PATH (the policy's `path`) and sees only their closure of the store
# (`empty_paths` and `read_only_paths`), since /usr/local/bin:/usr/bin:/bin holds nothing here.
{ self }:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.nanoclaw;

  # What the scenarios run inside tool units: sh -c with curl, python3 and coreutils.
  toolPackages = with pkgs; [ coreutils findutils gnugrep curl python3 ];

  # The Debian node's venv, for the smoke scenario's import check.
  venv = pkgs.python3.withPackages (ps: [ (ps.toPythonModule cfg.package) ]);

  # The source as the Debian driver mounts it (SOURCE_ENTRIES in vm-tests/driver.py), and
  # the scripted model the conversation scenario talks to.
  source = lib.fileset.toSource {
    root = ./..;
    fileset = lib.fileset.unions [
      ../nanoclaw
      ../units
      ../policies
      ../pyproject.toml
      ./.
      ../tests/__init__.py
      ../tests/support
    ];
  };

  # The conversation scenario's Matrix server, and what runs before the host (node/*.py).
  homeserver = "http://127.0.0.1:8018";
  sharedSecret = "nanoclaw-vm-test-registration";
  modelUrl = "/run/nanoclaw-vm-model/url";
  runtime = "/run/nanoclaw-vm";

  # Fails naming every difference between the module's policy and the Debian node's.
  samePolicy = pkgs.writeText "same-policy.py" ''
    import sys
    from pathlib import Path

    from nanoclaw.broker.policy_file import load_policy

    ours, debian = (load_policy(Path(path)) for path in sys.argv[1:3])
    problems = []
    if ours.data_dir != debian.data_dir:
        problems.append(f"data_dir: {ours.data_dir!r}, not {debian.data_dir!r}")
    # The module may protect more, never less.
    for field in ("protected_paths", "blocked_patterns"):
        missing = set(getattr(debian, field)) - set(getattr(ours, field))
        if missing:
            problems.append(f"{field} lacks {sorted(missing)}")
    if set(ours.groups) != set(debian.groups):
        problems.append(f"groups: {sorted(ours.groups)}, not {sorted(debian.groups)}")
    for name in sorted(set(ours.groups) & set(debian.groups)):
        for field in ("uid", "main", "mounts", "egress", "limits", "agent", "subagents"):
            mine, theirs = getattr(ours.groups[name], field), getattr(debian.groups[name], field)
            if mine != theirs:
                problems.append(f"groups.{name}.{field}: {mine!r}, not {theirs!r}")
    print("\n".join(problems) or "the same policy")
    sys.exit(1 if problems else 0)
  '';

  limits = {
    memoryMaxBytes = 67108864;
    tasksMax = 32;
    cpuQuotaPercent = 100;
    wallSeconds = 30;
    outputBytes = 65536;
  };
  # The least a policy allows an agent unit; beta's gets twice the memory.
  agentLimits = {
    memoryMaxBytes = 268435456;
    tasksMax = 32;
  };

  # vm-tests/node/policy.json's groups, each with the tools the scenarios run.
  groups = {
    alpha = {
      uid = 61001;
      main = true;
      agent.uid = 62001;
      mounts = [
        { host = "/srv/shared"; sandbox = "/workspace/shared"; writable = false; }
        { host = "/srv/scratch"; sandbox = "/workspace/scratch"; writable = true; }
      ];
      subagents.reader = {
        description = "Reads.";
        prompt = "You read.";
        tools = [ "bash" ];
        readonly = true;
      };
      packages = toolPackages;
    };
    beta = {
      uid = 61002;
      agent = { uid = 62002; memoryMaxBytes = 536870912; };
      limits.tmpBytes = 8388608;
      mounts = [
        { host = "/srv/repo"; sandbox = "/workspace/repo"; writable = true; }
        { host = "/srv/open-repo"; sandbox = "/workspace/open-repo"; writable = true; protect = false; }
      ];
      packages = toolPackages;
    };
    cidr = {
      uid = 61003;
      agent.uid = 62003;
      egress.cidrs = [ "11.0.0.100/32" ];
      packages = toolPackages;
    };
    web = {
      uid = 61004;
      agent.uid = 62004;
      egress.domains = [ "allowed.test" ];
      subagents.offline = {
        description = "Works offline.";
        prompt = "You work offline.";
        tools = [ "bash" ];
        noEgress = true;
      };
      packages = toolPackages;
    };
  };
in
{
  imports = [ self.nixosModules.default ];

  services.nanoclaw = {
    enable = true;
    package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
    settings.matrix = {
      inherit homeserver;
      user_id = "@nanoclaw:localhost";
      owners = [ "@owner:localhost" ];
    };
    # Written by node/matrix_setup.py before the host starts.
    accessTokenFile = "${runtime}/matrix-token";
    apiKeyFile = "${runtime}/anthropic-key";
    # Placeholders: the conversation scenario's room gets its ID only at run time.
    settings.groups = lib.mapAttrs (name: _: { room_id = "!${name}:localhost"; }) groups;

    dataDir = "/var/lib/nanoclaw";
    protectedPaths = [ "/etc/nanoclaw" ];
    defaults.limits = limits;
    defaults.agent = agentLimits;
    inherit groups;
  };

  # The host starts only with the conversation scenario, after what it needs, and reads the
  # module's config.toml with the room's ID and the model's URL put in.
  systemd.services.nanoclaw = {
    wantedBy = lib.mkForce [ ];
    requires = [ "nanoclaw-vm-matrix.service" ];
    after = [ "nanoclaw-vm-matrix.service" ];
    serviceConfig = {
      ExecStartPre = lib.mkForce "${cfg.package}/bin/nanoclaw check-config --config ${runtime}/config.json";
      ExecStart = lib.mkForce "${cfg.package}/bin/nanoclaw run --config ${runtime}/config.json";
    };
  };
  systemd.services.nanoclaw-vm-matrix = {
    description = "Matrix accounts, the owners' room and the host's config for the conversation scenario";
    requires = [
      "matrix-synapse.service"
      "nanoclaw-vm-model.service"
    ];
    after = [
      "matrix-synapse.service"
      "nanoclaw-vm-model.service"
    ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      RuntimeDirectory = "nanoclaw-vm";
      RuntimeDirectoryPreserve = true;
      ExecStart = "${pkgs.python3.interpreter} ${./node/matrix_setup.py} ${homeserver} ${sharedSecret} ${modelUrl} alpha";
    };
  };
  systemd.services.nanoclaw-vm-model = {
    description = "the scripted model of the conversation scenario";
    environment.PYTHONPATH = "${source}";
    serviceConfig = {
      DynamicUser = true;
      RuntimeDirectory = "nanoclaw-vm-model";
      ExecStart = "${venv}/bin/python ${./node/model.py} ${modelUrl}";
    };
  };
  # As nixpkgs' Matrix bot tests have it: SQLite, the client API only, accounts made with
  # the shared secret. Started with the host, on a port the other scenarios leave alone.
  services.matrix-synapse = {
    enable = true;
    settings = {
      server_name = "localhost";
      database.name = "sqlite3";
      registration_shared_secret = sharedSecret;
      listeners = [
        {
          port = 8018;
          bind_addresses = [ "127.0.0.1" ];
          type = "http";
          tls = false;
          x_forwarded = false;
          resources = [
            {
              names = [ "client" ];
              compress = false;
            }
          ];
        }
      ];
    };
  };
  systemd.services.matrix-synapse.wantedBy = lib.mkForce [ ];

  # The test framework panics on any OOM; the scenarios OOM-kill a tool unit on purpose.
  boot.kernel.sysctl."vm.panic_on_oom" = 0;

  # The Debian VM's address on the scenarios' network, IPv4 only, no DHCP and no DNS.
  networking.useDHCP = false;
  networking.interfaces.eth1 = {
    ipv4.addresses = lib.mkForce [ { address = "11.0.0.15"; prefixLength = 24; } ];
    ipv6.addresses = lib.mkForce [ ];
  };
  networking.hosts = {
    "11.0.0.100" = [ "allowed.test" ];
    "11.0.0.101" = [ "denied.test" ];
  };

  # What the scenarios run on the node itself.
  environment.systemPackages = with pkgs; [
    cfg.package
    curl
    git # the owner's, in the mounts scenario
    python3
    netcat # the test driver's wait_for_open_port
    shadow # useradd
    util-linux # setpriv, findmnt
    procps # pgrep
  ];

  # Files and directories setup.sh makes that the module does not (the group folders are
  # the module's). /bin/true and /bin/sleep are argv the scenarios
  # name (NixOS has only /bin/sh); /usr/local/bin is where one plants a setuid shell.
  systemd.tmpfiles.settings."90-nanoclaw-vm-node" =
    {
      # alpha's own files, so that only the read-only bind stops alpha from writing there.
      "/srv/shared".d = { mode = "0755"; user = "61001"; group = "61001"; };
      "/srv/shared/readme".f = {
        mode = "0644";
        user = "61001";
        group = "61001";
        argument = "shared-file";
      };
      "/srv/scratch".d = { mode = "0755"; user = "61001"; group = "61001"; };
      # beta's repositories: root's, so root's git works in them, and writable by beta's
      # group, so only the protection stops a tool.
      "/srv/repo".d = { mode = "0775"; user = "root"; group = "61002"; };
      "/srv/open-repo".d = { mode = "0775"; user = "root"; group = "61002"; };
      # The global memory, as the host's first session leaves it: the host's, readable by all.
      "/var/lib/nanoclaw/memory".d = { mode = "0750"; user = "nanoclaw"; group = "nanoclaw"; };
      "/var/lib/nanoclaw/memory/global".d = { mode = "0755"; user = "nanoclaw"; group = "nanoclaw"; };
      "/var/lib/nanoclaw/memory/global/CLAUDE.md".f = {
        mode = "0644";
        user = "nanoclaw";
        group = "nanoclaw";
        argument = "global-memory";
      };
      "/var/lib/nanoclaw/nanoclaw.db".f = { mode = "0644"; argument = "database"; };
      "/var/lib/nanoclaw/groups/beta/secret".f = {
        mode = "0644";
        user = "61002";
        group = "61002";
        argument = "beta-secret";
      };
      "/usr/local/bin".d.mode = "0755";
      "/bin/true"."L+".argument = "${pkgs.coreutils}/bin/true";
      "/bin/sleep"."L+".argument = "${pkgs.coreutils}/bin/sleep";
      "/opt/nanoclaw".d.mode = "0755";
      "/opt/nanoclaw/venv"."L+".argument = "${venv}";
      # Where nanoclaw.broker.agent_probe, which the agent scenario runs, looks for the model
      # relay's forwarder (the broker itself is told where it is).
      "/usr/lib/systemd/systemd-socket-proxyd"."L+".argument =
        "${config.systemd.package}/lib/systemd/systemd-socket-proxyd";
    };

  # The source, read-only at the Debian node's path.
  systemd.mounts = [
    {
      what = "${source}";
      where = "/opt/nanoclaw-src";
      type = "none";
      options = "bind,ro";
      wantedBy = [ "multi-user.target" ];
    }
  ];

  # The module's policy is compared with the Debian node's at the start of every test.
  environment.etc."nanoclaw-vm-node/policy.json".source = ./node/policy.json;
  environment.etc."nanoclaw-vm-node/same-policy.py".source = samePolicy;

  # The filesystem scenario walks / from inside a unit: a store image holds only this
  # node's closure, where the host's store shared over 9p would take the walk past its timeout.
  virtualisation.useNixStoreImage = true;
  # Synapse, the host and the CLI beside the tool units of the scenarios.
  virtualisation.memorySize = 2048;
  virtualisation.cores = 2;
}
