# Evaluation-time checks of services.nanoclaw, as assertions whose messages say what to
# change, with nanoclaw's rules (rules.json and predicates.nix). Building the policy file
# runs nanoclaw/broker/policy_file.py on it again, with symlinks resolved and IPv6 host bits,
# which Nix cannot see.
{
  lib,
  cfg,
  rules,
  # agent.nix, with these rules.
  agent,
  # The system's users.users and users.groups, for ids the module's users would share.
  users,
}:
let
  inherit (lib)
    concatLists
    concatMap
    mapAttrsToList
    imap0
    optional
    hasPrefix
    toLower
    ;

  inherit (import ./predicates.nix {
    inherit lib rules;
    inherit (cfg) blockedPatterns;
  })
    absolute
    components
    blockedComponent
    cidrProblem
    domainOk
    ;

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
      room = cfg.settings.groups.${name} or { };
    in
    [
      (check
        (
          builtins.match rules.group.pattern name != null && !lib.elem name rules.group.reserved
        )
        ''
          ${at}: the group name must match ${rules.group.pattern} with at most
          ${toString agent.maxGroupName} characters (lowercase letters, digits, '_' or '-'), so that its
          users ${rules.group.tool_user_prefix}${name} and ${agent.userPrefix}${name} fit the
          ${toString rules.group.max_user_name} characters a user name may have, and not be
          ${lib.concatStringsSep " or " rules.group.reserved}.''
      )
      (check (group.uid != rules.uid.nobody)
        "${at}.uid: must not be ${toString rules.uid.nobody} (nobody), which others share."
      )
      (check (group.agent.uid != rules.uid.nobody)
        "${at}.agent.uid: must not be ${toString rules.uid.nobody} (nobody), which others share."
      )
      (check (room ? room_id) ''
        ${at}.roomId: the group needs its Matrix room: set roomId (or settings.groups.${name}.room_id).'')
      (check ((room.main or false) == group.main) ''
        ${option}.settings.groups.${name}.main: must be ${lib.boolToString group.main}, as ${at}.main
        (the sandbox policy's) says.'')
      (check (group.egress.cidrs == [ ] || group.egress.domains == [ ]) ''
        ${at}.egress: has both cidrs and domains, but a group reaches either egress.cidrs (on the
        host's network, by IP) or egress.domains (in a network of its own, through the egress
        proxy), not both: make two groups.'')
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
            && hasPrefix "${rules.workspace}/" mount.sandbox
            && builtins.match ".*:.*" mount.sandbox == null
            && components mount.sandbox != components rules.workspace
            && !lib.any (
              place: lib.take (lib.length (components place)) (components mount.sandbox) == components place
            ) rules.reserved_sandbox
          ) ''
            ${mountAt}.sandbox: must be an absolute path under ${rules.workspace}/ without ':' or '..', and
            not ${lib.concatStringsSep " or " rules.reserved_sandbox} (the broker's), not "${mount.sandbox}".'')
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

  # Every uid the module gives a user (and the same gid to its group), by option.
  uids = concatLists (
    mapAttrsToList (name: group: [
      {
        option = "${option}.groups.${name}.uid";
        inherit (group) uid;
      }
      {
        option = "${option}.groups.${name}.agent.uid";
        inherit (group.agent) uid;
      }
    ]) cfg.groups
  );
  # The users and groups the module makes, and everyone else's.
  ours =
    [ "nanoclaw" ]
    ++ concatLists (
      mapAttrsToList (name: _: [
        "${rules.group.tool_user_prefix}${name}"
        "${agent.userPrefix}${name}"
      ]) cfg.groups
    );
  others = what: removeAttrs users.${what} ours;
  # Who else has `uid`: "user alice", "group media".
  holders =
    uid:
    mapAttrsToList (name: _: "user ${name}") (lib.filterAttrs (_: user: user.uid == uid) (others "users"))
    ++ mapAttrsToList (name: _: "group ${name}") (
      lib.filterAttrs (_: group: group.gid == uid) (others "groups")
    );
  mains = lib.attrNames (lib.filterAttrs (_: group: group.main) cfg.groups);
  secrets = secretsIn "${option}.settings" cfg.settings;
  strays = lib.attrNames (removeAttrs cfg.settings.groups (lib.attrNames cfg.groups));
  socket = cfg.settings.sandbox_socket;
in
concatLists (mapAttrsToList groupChecks cfg.groups)
++ concatMap (
  entry:
  let
    same = lib.filter (other: other.uid == entry.uid && other.option != entry.option) uids;
    held = holders entry.uid;
  in
  [
    (check (same == [ ]) ''
      ${entry.option}: ${toString entry.uid} is also ${lib.concatMapStringsSep ", " (other: other.option) same};
      every group's tool user (uid) and agent user (agent.uid, by default uid + ${toString agent.uidOffset}) each
      need a uid of their own.'')
    (check (held == [ ]) ''
      ${entry.option}: ${toString entry.uid} is already the id of ${lib.concatStringsSep ", " held}: the
      module's users and groups need ids of their own.'')
  ]
) uids
++ [
  (check (lib.length mains <= 1)
    "${option}.groups: only one group may be main, not ${lib.concatStringsSep ", " mains}."
  )
  (check (strays == [ ]) ''
    ${option}.settings.groups: ${lib.concatStringsSep ", " strays} has no sandbox: declare it in
    ${option}.groups (with its uid), which puts it into settings.groups.'')
  (check (secrets == [ ]) ''
    ${option}.settings: ${lib.concatStringsSep ", " secrets} looks like a secret. The settings go
    into the world-readable Nix store: give secrets as files with accessTokenFile and apiKeyFile
    or oauthTokenFile (delivered with LoadCredential=).'')
  (check
    (
      !(cfg.settings.matrix ? access_token_file)
      && !(cfg.settings.model ? api_key_file)
      && !(cfg.settings.model ? oauth_token_file)
    )
    ''
      ${option}.settings: the module hands the host its secrets as credentials: set accessTokenFile
      and apiKeyFile instead of matrix.access_token_file and model.api_key_file (oauthTokenFile
      instead of model.oauth_token_file).''
  )
  # The host puts one credential on every model request.
  (check (cfg.apiKeyFile == null || cfg.oauthTokenFile == null) ''
    ${option}.apiKeyFile and ${option}.oauthTokenFile: set at most one: an API key, or a Claude
    subscription's token.'')
  (check (cfg.settings.matrix.owners != [ ])
    "${option}.settings.matrix.owners: list at least one Matrix user ID: the people the bot serves."
  )
  (check (absolute socket && hasPrefix "/run/" socket && socket != "/run/") ''
    ${option}.settings.sandbox_socket: must be a path under /run/ (which every tool unit sees
    empty, and only root may write), not "${socket}".'')
  (check (absolute cfg.dataDir && cfg.dataDir != "/")
    "${option}.dataDir: must be an absolute path other than / without '..', not \"${cfg.dataDir}\"."
  )
  (check (lib.all absolute cfg.protectedPaths)
    "${option}.protectedPaths: every entry must be an absolute path without '..'."
  )
  # An argument of the broker's ExecStart=, where systemd would split, unquote or expand these.
  (check (builtins.match "/[^[:space:]\"'\\\\%$]*" (toString cfg.agentCli) != null) ''
    ${option}.agentCli: must be an absolute path without spaces, quotes, backslashes, '%' or '$',
    not "${toString cfg.agentCli}".'')
]
