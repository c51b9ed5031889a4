#!/bin/bash
# The Debian node: what the NixOS module's configuration gives the NixOS node, done by
# hand from units/ and this policy. Runs as root in the guest, source at /opt/nanoclaw-src.
set -euo pipefail
src=/opt/nanoclaw-src
node=$src/vm-tests/node

for tool in nanoclaw:nanoclaw.cli nanoclaw-sandboxd:nanoclaw.broker.sandboxd; do
  printf '#!/bin/sh\nexec /opt/nanoclaw/venv/bin/python -m %s "$@"\n' "${tool#*:}" \
    > "/usr/local/bin/${tool%%:*}"
  chmod 0755 "/usr/local/bin/${tool%%:*}"
done

mkdir -p /etc/sysusers.d /etc/tmpfiles.d
install -m 0644 "$src/units/nanoclaw.sysusers" /etc/sysusers.d/nanoclaw.conf
install -m 0644 "$src/units/nanoclaw.tmpfiles" /etc/tmpfiles.d/nanoclaw.conf
{
  for g in alpha:61001 beta:61002 cidr:61003 web:61004; do
    echo "u nanoclaw-tool-${g%%:*} ${g##*:} - -"  # and its group, with the same ID
  done
} > /etc/sysusers.d/nanoclaw-tools.conf
# Each group's agent runtime runs as a user of its own (the policy's agent.uid), which
# systemd and the broker want in the user and group databases.
{
  for g in alpha:62001 beta:62002 cidr:62003 web:62004; do
    echo "u nanoclaw-agent-${g%%:*} ${g##*:} - -"
  done
} > /etc/sysusers.d/nanoclaw-agents.conf
systemd-sysusers
systemd-tmpfiles --create

install -m 0644 "$node/policy.json" /etc/nanoclaw/policy.json
mkdir -p /srv/shared /srv/scratch
# The global memory, as the host's first session leaves it: the host's, readable by all.
install -d -o nanoclaw -g nanoclaw -m 0750 /var/lib/nanoclaw/memory
install -d -o nanoclaw -g nanoclaw -m 0755 /var/lib/nanoclaw/memory/global
echo global-memory > /var/lib/nanoclaw/memory/global/CLAUDE.md
echo shared-file > /srv/shared/readme
# alpha's own files, so that only the read-only bind stops alpha from writing there.
chown -R 61001:61001 /srv/shared /srv/scratch
# beta's repositories (the mounts scenario makes them git repositories): root's, so root's
# git works in them, and writable by beta's group, so only the protection stops a tool.
install -d -o root -g 61002 -m 0775 /srv/repo /srv/open-repo
for g in alpha:61001 beta:61002 cidr:61003 web:61004; do
  install -d -o "${g##*:}" -g "${g##*:}" -m 0700 "/var/lib/nanoclaw/groups/${g%%:*}"
done
echo beta-secret > /var/lib/nanoclaw/groups/beta/secret
chown 61002:61002 /var/lib/nanoclaw/groups/beta/secret
echo database > /var/lib/nanoclaw/nanoclaw.db

# Names for the egress scenarios: both addresses are forwarded to one server outside.
cat >> /etc/hosts <<'HOSTS'
11.0.0.100 allowed.test
11.0.0.101 denied.test
HOSTS

install -m 0644 "$src/units/nanoclaw-sandboxd.socket" "$src/units/nanoclaw-sandboxd.service" \
  "$src/units/nanoclaw.service" /etc/systemd/system/
systemctl daemon-reload
systemctl start nanoclaw-sandboxd.socket
