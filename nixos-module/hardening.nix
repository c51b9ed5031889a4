# The hardening of the units in units/, key by key; default.nix sets each with mkDefault,
# and services.nanoclaw.serviceOverrides replaces what a setup must loosen in the host's.
let
  # What both services share.
  common = {
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateIPC = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
    ];
    UMask = "0077";
  };
in
{
  # units/nanoclaw.service: no capabilities, a user namespace of its own.
  host = common // {
    UMask = "0027";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    PrivateUsers = true;
    RemoveIPC = true;
    DevicePolicy = "closed";
    # The bundled CLI is a JIT-compiled JavaScript runtime: it needs writable executable
    # memory, so MemoryDenyWriteExecute= stays off.
    MemoryDenyWriteExecute = false;
    SystemCallErrorNumber = "EPERM";
    # Nothing in the host's unit reads or writes another process's memory (the host is
    # also not dumpable: nanoclaw/host/untraceable.py).
    SystemCallFilter = common.SystemCallFilter ++ [ "~ptrace process_vm_readv process_vm_writev" ];
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
  };

  # units/nanoclaw-sandboxd.service: root, to start units with any User=; systemd lets a
  # caller manage units when it holds CAP_SYS_ADMIN, and that is all it keeps. Tool units'
  # mounts are PID 1's work, and clients are known by SO_PEERCRED and SO_PEERGROUPS.
  # It sees /home as PID 1 does (read-only, not hidden), since it checks the host paths
  # PID 1 binds (the policy refuses sources in /tmp); CAP_DAC_READ_SEARCH lists tool
  # users' directories for what units must not see and for workspace sizes, walked
  # without following links.
  broker = common // {
    PrivateMounts = true;
    ProtectHome = "read-only";
    DevicePolicy = "closed";
    # IP only for its start-up probe's listener, on loopback: the relays it starts for groups
    # with domains are units of their own.
    IPAddressDeny = "any";
    IPAddressAllow = [ "localhost" ];
    CapabilityBoundingSet = "CAP_SYS_ADMIN CAP_DAC_READ_SEARCH";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
  };
}
