# The hardening of units/nanoclaw.service, key by key: default.nix sets each with mkDefault,
# and services.nanoclaw.serviceOverrides replaces what a setup must loosen.
{
  UMask = "0027";
  NoNewPrivileges = true;
  CapabilityBoundingSet = "";
  AmbientCapabilities = "";
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  PrivateDevices = true;
  PrivateIPC = true;
  PrivateUsers = true;
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
  RemoveIPC = true;
  LockPersonality = true;
  DevicePolicy = "closed";
  # The bundled CLI is a JIT-compiled JavaScript runtime: it needs writable executable
  # memory, so MemoryDenyWriteExecute= stays off.
  MemoryDenyWriteExecute = false;
  SystemCallArchitectures = "native";
  SystemCallFilter = [
    "@system-service"
    "~@privileged @resources"
  ];
  SystemCallErrorNumber = "EPERM";
  RestrictAddressFamilies = [
    "AF_UNIX"
    "AF_INET"
    "AF_INET6"
    "AF_NETLINK"
  ];
}
