# Each group's agent unit (nanoclaw/broker/agent_unit.py), in which the broker runs the
# group's agent runtime, the Claude Code CLI, for as long as a session lasts: the user it
# runs as, where systemd keeps its state and its bounds, all from rules.json (the policy's
# own), and the module's default uid for it.
{ rules }:
{
  userPrefix = rules.group.agent_user_prefix;
  # The longest group name: both nanoclaw-tool-<name> and nanoclaw-agent-<name> fit.
  maxGroupName = rules.group.max_length;
  # groups.<name>.agent.uid defaults to the group's uid and this, as the Quickstart's
  # machine numbers its agent users.
  uidOffset = 1000;
  # Where systemd keeps each agent unit's state (StateDirectory=), one directory per group.
  stateRoot = rules.agent.state_root;
  inherit (rules.agent) limits;
}
