# Each group's agent unit (nanoclaw/broker/agent_unit.py), in which the broker runs the
# group's agent runtime, the Claude Code CLI, for as long as a session lasts: the user it
# runs as and its bounds, as nanoclaw/broker/policy.py has them (AGENT_USER_PREFIX,
# AGENT_LIMIT_RANGES). rules.json does not carry them, so they are written out here and
# tests/test_nixos_module.py holds them equal to Python's.
{ rules }:
let
  userPrefix = "nanoclaw-agent-";
  byUserName = rules.group.max_user_name - builtins.stringLength userPrefix;
in
{
  inherit userPrefix;
  # The longest group name whose users, nanoclaw-tool-<name> and nanoclaw-agent-<name>,
  # both fit the longest user name: one less than the policy's own limit.
  maxGroupName = if byUserName < rules.group.max_length then byUserName else rules.group.max_length;
  # groups.<name>.agent.uid defaults to the group's uid and this, as the Quickstart's
  # machine numbers its agent users.
  uidOffset = 1000;
  # Where systemd keeps each agent unit's state (StateDirectory=), one directory per group.
  stateRoot = "/var/lib/nanoclaw-agent";
  limits = [
    {
      name = "memory_max_bytes";
      default = 1073741824;
      min = 268435456;
      max = 68719476736;
      text = "MemoryMax= of an agent unit, in bytes; the CLI alone needs about 220 MiB";
    }
    {
      name = "tasks_max";
      default = 256;
      min = 32;
      max = 16384;
      text = "TasksMax= of an agent unit";
    }
    {
      name = "cpu_weight";
      default = 100;
      min = 1;
      max = 10000;
      text = "CPUWeight= of an agent unit, its share of CPU against the units beside it";
    }
  ];
}
