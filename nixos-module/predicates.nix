# The rules of nanoclaw/broker/policy.py that checks.nix applies to options, in Nix: which path
# component is blocked, which CIDR and domain are valid. tests/test_nixos_module.py runs
# them and Python's on the same values: IPv4, domains and components must agree exactly;
# for IPv6, Nix leaves host bits to the build's check.
{
  lib,
  rules,
  # services.nanoclaw.blockedPatterns, beside the built-in ones.
  blockedPatterns,
}:
let
  inherit (lib) hasPrefix toLower;
  patterns = rules.blocked_patterns ++ blockedPatterns;

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
      hasPrefix rules.env_file_prefix folded
      || lib.any (
        pattern:
        let
          wanted = toLower pattern;
        in
        folded == wanted || hasPrefix (wanted + ".") folded
      ) patterns
    ) null (components path);

  # Python's ipaddress refuses leading zeros in an octet (they once meant octal).
  octet = "(0|[1-9][0-9]{0,2})";
  octets = "${octet}\\.${octet}\\.${octet}\\.${octet}";
  # An IPv4 network without host bits, or an IPv6 one (its host bits are the build's check).
  cidrProblem =
    cidr:
    let
      v4 = builtins.match "${octets}(/([0-9]{1,2}))?" cidr;
      v6 = builtins.match "([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)(/([0-9]{1,3}))?" cidr;
    in
    if v4 != null then
      let
        bytes = map lib.toIntBase10 (lib.sublist 0 4 v4);
        prefix = if lib.elemAt v4 5 == null then 32 else lib.toIntBase10 (lib.elemAt v4 5);
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
      if lib.elemAt v6 2 != null && lib.toIntBase10 (lib.elemAt v6 2) > 128 then
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

in
{
  inherit
    absolute
    components
    blockedComponent
    cidrProblem
    domainOk
    ;
}
