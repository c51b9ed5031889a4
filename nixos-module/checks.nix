# Evaluation-time checks of services.nanoclaw, as assertions whose messages say what to
# change. The same rules as nanoclaw/policy_file.py, which checks the built policy file again
# (with symlinks resolved and IPv6 host bits, which Nix cannot see).
{ lib, cfg }:
let
  inherit (lib) concatLists mapAttrsToList imap0 optional hasPrefix toLower;

  # nanoclaw/policy.py GROUP_PATTERN, RESERVED_GROUPS and DEFAULT_BLOCKED_PATTERNS.
  groupPattern = "[a-z0-9][a-z0-9_-]{0,63}";
  defaultBlockedPatterns = [
    ".ssh"
    ".gnupg"
    ".gpg"
    ".aws"
    ".azure"
    ".gcloud"
    ".kube"
    ".docker"
    "credentials"
    ".env"
    ".netrc"
    ".npmrc"
    ".pypirc"
    "id_rsa"
    "id_ed25519"
    "private_key"
    ".secret"
  ];
  patterns = defaultBlockedPatterns ++ cfg.blockedPatterns;

  absolute = path: hasPrefix "/" path && !(lib.elem ".." (lib.splitString "/" path));
  components = path: lib.filter (c: c != "" && c != ".") (lib.splitString "/" path);

  # policy.blocked_component: equal to a pattern, or the pattern and a dot, or any .env*.
  blockedComponent =
    path:
    lib.findFirst (
      component:
      let
        folded = toLower component;
      in
      hasPrefix ".env" folded
      || lib.any (
        pattern:
        let
          wanted = toLower pattern;
        in
        folded == wanted || hasPrefix (wanted + ".") folded
      ) patterns
    ) null (components path);

  octets = "([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})";
  # An IPv4 network without host bits, or an IPv6 one (its host bits are the build's check).
  cidrProblem =
    cidr:
    let
      v4 = builtins.match "${octets}(/([0-9]{1,2}))?" cidr;
      v6 = builtins.match "([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)(/([0-9]{1,3}))?" cidr;
    in
    if v4 != null then
      let
        bytes = map lib.toInt (lib.sublist 0 4 v4);
        prefix = if lib.elemAt v4 5 == null then 32 else lib.toInt (lib.elemAt v4 5);
        address = lib.foldl (acc: byte: acc * 256 + byte) 0 bytes;
        size = lib.foldl (acc: _: acc * 2) 1 (lib.range 1 (32 - prefix));
      in
      if lib.any (byte: byte > 255) bytes || prefix > 32 then
        "is not an IPv4 network"
      else if address - (address / size) * size != 0 then
        "has host bits set below /${toString prefix}"
      else
        null
    else if v6 != null then
      if lib.elemAt v6 2 != null && lib.toInt (lib.elemAt v6 2) > 128 then
        "has a prefix longer than 128"
      else
        null
    else
      "is not an IP network like 140.82.112.0/20 or 2001:db8::/32";

  label = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
  # policy._is_domain_pattern: a lowercase DNS name, or *. and one of at least two labels.
  domainOk =
    domain:
    let
      name = lib.removePrefix "*." domain;
      labels = lib.splitString "." name;
    in
    builtins.stringLength name <= 253
    && builtins.match "${label}(\\.${label})*" name != null
    && builtins.match "[0-9]+" (lib.last labels) == null
    && (name == domain || lib.length labels >= 2);

  # Keys and values that look like secrets; *_file and *_credential only name them.
  secretKey =
    key:
    builtins.match "(.*[_-])?(token|password|passwd|secret|api_?key|private_?key)" (toLower key)
    != null
    && builtins.match ".*_(file|credential)" key == null;
  secretValue =
    value:
    builtins.match "(syt_|sk-ant-|sk-|ghp_|gho_|github_pat_|glpat-|xox[abp]-|Bearer ).*" value != null;
  secretsIn =
    path: value:
    if builtins.isAttrs value then
      concatLists (
        mapAttrsToList (
          key: inner:
          let
            at = "${path}.${key}";
          in
          optional (secretKey key && !(builtins.isAttrs inner)) at ++ secretsIn at inner
        ) value
      )
    else if builtins.isList value then
      concatLists (imap0 (index: secretsIn "${path}[${toString index}]") value)
    else
      optional (builtins.isString value && secretValue value) path;

  check = assertion: message: { inherit assertion message; };
  option = "services.nanoclaw";

  groupChecks =
    name: group:
    let
      at = "${option}.groups.${name}";
    in
    [
      (check (builtins.match groupPattern name != null && name != "global") ''
        ${at}: the group name must match ${groupPattern} (lowercase letters, digits, '_' or '-')
        and not be "global" (the memory all groups share).'')
      (check (group.uid != 65534) "${at}.uid: must not be 65534 (nobody), which others share.")
      (check (group.roomId != null || (cfg.settings.groups.${name} or { }) ? room_id) ''
        ${at}.roomId: the group needs its Matrix room: set roomId (or settings.groups.${name}.room_id).'')
      (check (group.egress.domains == [ ] || cfg.proxy != null) ''
        ${at}.egress.domains: are reached only through the egress proxy; set ${option}.proxy,
        e.g. { address = "127.0.0.9"; port = 3128; }.'')
    ]
    ++ concatLists (
      imap0 (
        index: mount:
        let
          mountAt = "${at}.mounts[${toString index}]";
          blocked = blockedComponent mount.host;
        in
        [
          (check (absolute mount.host && mount.host != "/")
            "${mountAt}.host: must be an absolute path other than / without '..', not \"${mount.host}\"."
          )
          (check (blocked == null) ''
            ${mountAt}.host: ${mount.host} has the component "${toString blocked}", which matches a
            blocked pattern: credentials are never mounted.'')
          (check (
            absolute mount.sandbox
            && hasPrefix "/workspace/" mount.sandbox
            && builtins.match ".*:.*" mount.sandbox == null
            && builtins.match "/workspace/+(group|global)(/.*)?" mount.sandbox == null
            && components mount.sandbox != [ "workspace" ]
          ) ''
            ${mountAt}.sandbox: must be an absolute path under /workspace/ without ':' or '..', and
            not /workspace/group or /workspace/global (the broker's), not "${mount.sandbox}".'')
        ]
      ) group.mounts
    )
    ++ imap0 (
      index: cidr:
      let
        problem = cidrProblem cidr;
      in
      check (problem == null) "${at}.egress.cidrs[${toString index}]: \"${cidr}\" ${toString problem}."
    ) group.egress.cidrs
    ++ imap0 (
      index: domain:
      check (domainOk domain) ''
        ${at}.egress.domains[${toString index}]: "${domain}" must be a lowercase DNS name like
        github.com, or *.example.com for the names below it (no IPs, ports, schemes or *.com).''
    ) group.egress.domains;

  uids = mapAttrsToList (name: group: { inherit name; inherit (group) uid; }) cfg.groups;
  mains = lib.attrNames (lib.filterAttrs (_: group: group.main) cfg.groups);
  secrets = secretsIn "${option}.settings" cfg.settings;
in
concatLists (mapAttrsToList groupChecks cfg.groups)
++ map (
  entry:
  let
    same = lib.filter (other: other.uid == entry.uid) uids;
  in
  check (lib.length same == 1) ''
    ${option}.groups.${entry.name}.uid: ${toString entry.uid} is also the uid of group(s)
    ${lib.concatMapStringsSep ", " (other: other.name) (lib.filter (o: o.name != entry.name) same)}; each group needs its own.''
) uids
++ [
  (check (lib.length mains <= 1)
    "${option}.groups: only one group may be main, not ${lib.concatStringsSep ", " mains}."
  )
  (check (secrets == [ ]) ''
    ${option}.settings: ${lib.concatStringsSep ", " secrets} looks like a secret. The settings go
    into the world-readable Nix store: give secrets as files with accessTokenFile and apiKeyFile
    (delivered with LoadCredential=).'')
  (check (cfg.owners != [ ])
    "${option}.owners: list at least one Matrix user ID: the people the bot serves."
  )
  (check (absolute cfg.dataDir && cfg.dataDir != "/")
    "${option}.dataDir: must be an absolute path other than /, not \"${cfg.dataDir}\"."
  )
  (check (lib.all absolute cfg.protectedPaths)
    "${option}.protectedPaths: every entry must be an absolute path without '..'."
  )
  (check (absolute cfg.accessTokenFile)
    "${option}.accessTokenFile: must be an absolute path to a file readable by root."
  )
  (check (cfg.apiKeyFile == null || absolute cfg.apiKeyFile)
    "${option}.apiKeyFile: must be an absolute path to a file readable by root."
  )
]
