# Limits by option name: the policy key memory_max_bytes is the option memoryMaxBytes. The
# tool units' limits come from rules.json (nanoclaw/broker/policy.py's LIMIT_RANGES), so a
# limit added in Python becomes an option with the next
# `python -m nanoclaw.rules > nixos-module/rules.json`, and so do the agent units' (its `agent`).
{
  lib,
  limits ? (lib.importJSON ./rules.json).limits,
}:
let
  optionName =
    key:
    let
      words = lib.splitString "_" key;
      capitalised = word: lib.toUpper (lib.substring 0 1 word) + lib.substring 1 (lib.stringLength word) word;
    in
    lib.concatStrings ([ (lib.head words) ] ++ map capitalised (lib.tail words));
in
lib.listToAttrs (map (limit: lib.nameValuePair (optionName limit.name) limit) limits)
