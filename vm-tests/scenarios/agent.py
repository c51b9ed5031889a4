# The agent unit: a group's agent runtime (the Claude Code CLI), as the broker runs it for
# the host's session. nanoclaw.broker.agent_probe starts a unit with exactly the group's
# agent-unit properties, a Python probe in the CLI's place (on stdin), and its model relay.
# Each wall next to a control that shows the probe reaching its target where it may: as
# root on the node, as the agent user outside the unit (so that only the unit stops it),
# or in the unit where the policy allows. A stand-in credential proxy listens where the
# host's would (/run/nanoclaw-credentials/proxy.sock, the host unit's RuntimeDirectory).
start_all()
ensure_node()

AGENT_PROBE = "/opt/nanoclaw/venv/bin/python -m nanoclaw.broker.agent_probe"
# The unit's program must be a real path: on NixOS, /run/current-system is not in its /run.
PYTHON = machine.succeed('readlink -f "$(command -v python3)"').strip()
TOOL_UID = 61001
KEY = "sk-nanoclaw-stand-in-issued-placeholder"
CREDENTIALS = "/run/nanoclaw-credentials"

# Probes print one line each: the name and what happened (a result, or the errno's name).
PROBES = r"""
import errno, os, socket
def attempt(name, action):
    try:
        result = action()
    except TimeoutError:
        result = "timeout"
    except socket.gaierror:
        result = "gaierror"
    except OSError as e:
        result = errno.errorcode.get(e.errno or 0, str(e))
    print(name, result, flush=True)
def read(path):
    with open(path) as f:
        return f.read().strip().replace(" ", "_") or "empty"
def listed(path):
    return ",".join(sorted(os.listdir(path))) or "empty"
def write(path):
    with open(path, "w") as f:
        f.write("written\n")
    return "written"
def connect_unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
    return "connected"
def connect_tcp(host, port):
    socket.create_connection((host, port), 3).close()
    return "connected"
def ask_udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"nanoclaw?", (host, port))
        s.recv(512)
    return "answered"
def family(name):
    socket.socket(getattr(socket, name), socket.SOCK_DGRAM).close()
    return "made"
"""


def probed(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in output.splitlines() if " " in line)


def in_agent(group: str, script: str, timeout: int = 120) -> tuple[int, str, str]:
    """(agent_probe's exit status, the probe's stdout, the unit's result) of `script` run by
    Python in `group`'s agent unit."""
    status, output = machine.execute(
        f"{AGENT_PROBE} {group} {PYTHON} <<'EOF'\n{script}\nEOF", timeout=timeout
    )
    lines = output.splitlines()
    # agent_probe's last word (on stderr): "nanoclaw-agent-GROUP-ID.service: RESULT".
    ends = [
        i for i, line in enumerate(lines)
        if line.startswith(f"nanoclaw-agent-{group}-") and ".service: " in line
    ]  # fmt: skip
    assert ends, f"no agent unit ran for {group} (exit {status}):\n{output}"
    return status, "\n".join(lines[: ends[-1]]), lines[ends[-1]].split(": ", 1)[1].strip()


def agent_probes(group: str, body: str) -> dict[str, str]:
    status, output, result = in_agent(group, PROBES + body)
    assert status == 0 and result == "success", f"{group}: {result} (exit {status}):\n{output}"
    return probed(output)


def root_probes(body: str) -> dict[str, str]:
    return probed(machine.succeed(f"python3 - <<'EOF'\n{PROBES + body}\nEOF"))


def user_probes(uid: int, body: str) -> dict[str, str]:
    """The probes as `uid` on the node, outside any unit: only permissions apply."""
    return probed(
        machine.succeed(
            f"setpriv --reuid={uid} --regid={uid} --clear-groups "
            f"python3 - <<'EOF'\n{PROBES + body}\nEOF"
        )
    )


# The host's credential proxy, stood in for: it answers 200 to the placeholder it issued,
# 401 to any other key. As the host's unit has it: the nanoclaw user's runtime directory,
# 0755, and a socket open to all (0666), which the relays' dynamic users reach.
machine.succeed(
    "systemd-run --unit=stand-in-credential-proxy -p User=nanoclaw -p Group=nanoclaw "
    "-p RuntimeDirectory=nanoclaw-credentials -p RuntimeDirectoryMode=0755 python3 -c "
    + shlex.quote(
        "import http.server, os, socketserver\n"
        f"PATH = '{CREDENTIALS}/proxy.sock'\n"
        "class Proxy(http.server.BaseHTTPRequestHandler):\n"
        "    def do_POST(self):\n"
        "        self.rfile.read(int(self.headers.get('content-length') or 0))\n"
        f"        ok = self.headers.get('x-api-key') == '{KEY}'\n"
        "        body = b'model-ok\\n' if ok else b'unknown or revoked placeholder key\\n'\n"
        "        self.send_response(200 if ok else 401)\n"
        "        self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "    def log_message(self, *args):\n"
        "        pass\n"
        "server = socketserver.ThreadingUnixStreamServer(PATH, Proxy)\n"
        "os.chmod(PATH, 0o666)\n"
        "server.serve_forever()\n"
    )
)
machine.wait_until_succeeds(f'test "$(stat -c %a {CREDENTIALS}/proxy.sock)" = 666')
modes = machine.succeed(f"stat -c '%a %U' {CREDENTIALS} {CREDENTIALS}/proxy.sock").split("\n")
assert modes[:2] == ["755 nanoclaw", "666 nanoclaw"], modes

with subtest("the agent unit runs as the group's agent user, not its tool user or the host's"):
    identity = """
attempt("uid", lambda: os.getuid())
attempt("euid", lambda: os.geteuid())
attempt("gid", lambda: os.getgid())
attempt("groups", lambda: ",".join(str(g) for g in sorted(os.getgroups())) or "none")
status = open("/proc/self/status").read().splitlines()
attempt("caps", lambda: next(l.split()[1] for l in status if l.startswith("CapEff")))
"""
    inside = agent_probes("alpha", identity)
    assert (inside["uid"], inside["euid"], inside["gid"]) == ("62001",) * 3, inside
    assert inside["groups"] in ("none", "62001"), inside
    assert inside["caps"] == "0000000000000000", inside
    # Controls: the probe tells users apart; the tool user and the host's are others.
    assert tool_succeeds("alpha", "id -u").splitlines()[0] == str(TOOL_UID)
    host = machine.succeed("id -u nanoclaw").strip()
    assert host not in ("62001", str(TOOL_UID)), host
    assert root_probes(identity)["uid"] == "0"
    assert agent_probes("beta", identity)["uid"] == "62002"

with subtest("the host's credentials are out of the agent's reach"):
    # A stand-in for the Matrix token systemd hands the host, readable by all for now, so
    # that only the unit's own /run keeps the agent user from it.
    token = "/run/credentials/nanoclaw.service/matrix-token"
    machine.succeed(
        "install -d -m 0755 /run/credentials/nanoclaw.service",
        f"echo matrix-token-secret > {token} && chmod 0644 {token}",
    )
    try:
        probe = f'attempt("token", lambda: read("{token}"))\n'
        probe += 'attempt("credentials", lambda: listed("/run/credentials"))\n'
        assert root_probes(probe)["token"] == "matrix-token-secret"  # control
        assert user_probes(62001, probe)["token"] == "matrix-token-secret"  # control
        inside = agent_probes("alpha", probe)
        assert inside["token"] == "ENOENT" and inside["credentials"] == "ENOENT", inside
    finally:
        machine.succeed("rm -rf /run/credentials/nanoclaw.service")

with subtest("the host's database is out of the agent's reach"):
    database = "/var/lib/nanoclaw/nanoclaw.db"
    # Open to all for now (the data directory is the host's, 0750): only the unit's empty
    # /var/lib stands between the agent user and the database.
    machine.succeed(f"chmod 0755 /var/lib/nanoclaw && chmod 0644 {database}")
    try:
        probe = f'attempt("database", lambda: read("{database}"))\n'
        probe += 'attempt("data", lambda: listed("/var/lib/nanoclaw"))\n'
        assert root_probes(probe)["database"] == "database"  # control
        assert user_probes(62001, probe)["database"] == "database"  # control
        inside = agent_probes("alpha", probe)
        assert inside["database"] == "ENOENT" and inside["data"] == "ENOENT", inside
    finally:
        machine.succeed("chmod 0750 /var/lib/nanoclaw")

with subtest("another group's agent state is out of the agent's reach"):
    # Control: beta's agent writes its own state, which outlives its unit.
    inside = agent_probes("beta", 'attempt("own", lambda: write(os.environ["HOME"] + "/note"))')
    assert inside["own"] == "written", inside
    beta = "/var/lib/nanoclaw-agent/beta"
    assert machine.succeed(f"stat -c '%u %a' {beta} && cat {beta}/note") == "62002 700\nwritten\n"
    # Open to all for now: only the unit's /var/lib keeps alpha's agent from beta's state.
    machine.succeed(f"chmod 0755 {beta} && chmod 0644 {beta}/note")
    try:
        probe = f'attempt("note", lambda: read("{beta}/note"))\n'
        probe += 'attempt("states", lambda: listed("/var/lib/nanoclaw-agent"))\n'
        assert user_probes(62001, probe)["note"] == "written"  # control
        inside = agent_probes("alpha", probe)
        assert inside["note"] == "ENOENT" and inside["states"] == "alpha", inside
    finally:
        machine.succeed(f"chmod 0700 {beta}")

with subtest("the policy and the groups' mount sources are out of the agent's reach"):
    probe = """
attempt("policy", lambda: str(len(read("/etc/nanoclaw/policy.json")) > 0))
attempt("shared", lambda: read("/srv/shared/readme"))
attempt("repo", lambda: listed("/srv/repo") and "listed")
attempt("logs", lambda: listed("/var/log") and "listed")
"""
    expected = {"policy": "True", "shared": "shared-file", "repo": "listed", "logs": "listed"}
    assert root_probes(probe) == expected  # control
    assert user_probes(62001, probe) == expected  # control: only the unit stands in the way
    inside = agent_probes("alpha", probe)
    assert all(inside[name] in ("EACCES", "ENOENT") for name in expected), inside

with subtest("the broker's socket and D-Bus are out of the agent's reach"):
    probe = """
attempt("broker", lambda: connect_unix("/run/nanoclaw/sandbox.sock"))
attempt("dbus", lambda: connect_unix("/run/dbus/system_bus_socket"))
attempt("run", lambda: ",".join(os.path.join(t, f) for t, _, fs in os.walk("/run") for f in fs))
"""
    control = root_probes(probe)
    assert control["broker"] == "connected" and control["dbus"] == "connected", control
    assert user_probes(62001, probe)["dbus"] == "connected"  # control: the bus is open to all
    inside = agent_probes("alpha", probe)
    assert inside["broker"] == "ENOENT" and inside["dbus"] == "ENOENT", inside
    assert inside["run"] == "", inside  # no socket, no file at all: systemd's directories only

with subtest("the network is the model relay alone: no web, node services, DNS or IPv6"):
    # Stand-ins for a service on every address of the node (as Synapse's or sshd's) and a
    # resolver (as systemd-resolved's).
    machine.succeed(
        "systemd-run --unit=stand-in-agent-any -p DynamicUser=yes "
        "python3 -m http.server --bind 0.0.0.0 8009",
        resolver_stand_in("stand-in-agent-resolver"),
    )
    machine.wait_for_open_port(8009)
    machine.wait_until_succeeds("ss -uln | grep -q ':5353 '")
    route = machine.succeed("ip -4 -o route get 11.0.0.100").split()
    own = route[route.index("src") + 1]
    web = web_servers[0]
    probe = f"""
attempt("relay", lambda: connect_tcp("127.0.0.1", 8080))
attempt("web", lambda: connect_tcp("{web}", 80))
attempt("loopback", lambda: connect_tcp("127.0.0.1", 8009))
attempt("address", lambda: connect_tcp("{own}", 8009))
attempt("dns-loopback", lambda: ask_udp("127.0.0.1", 5353))
attempt("dns-address", lambda: ask_udp("{own}", 5353))
attempt("lookup", lambda: socket.getaddrinfo("example.com", 443) and "resolved")
attempt("inet", lambda: family("AF_INET"))
attempt("inet6", lambda: family("AF_INET6"))
attempt("netlink", lambda: family("AF_NETLINK"))
attempt("packet", lambda: family("AF_PACKET"))
"""
    try:
        control = root_probes(probe)
        for name in ("web", "loopback", "address"):
            assert control[name] == "connected", (name, control)
        for name in ("dns-loopback", "dns-address"):
            assert control[name] == "answered", (name, control)
        assert control["inet6"] == "made", control
        inside = agent_probes("alpha", probe)
        print("in alpha's agent unit:", inside)
        assert inside["relay"] == "connected", inside  # control: its one way out
        assert inside["inet"] == "made", inside
        assert inside["web"] == "ENETUNREACH", inside
        assert inside["loopback"] == "ECONNREFUSED", inside  # its loopback is the relay's
        assert inside["address"] == "ENETUNREACH", inside
        assert inside["dns-loopback"] in ("ECONNREFUSED", "timeout"), inside
        assert inside["dns-address"] in ("ENETUNREACH", "timeout"), inside
        assert inside["lookup"] == "gaierror", inside
        for name in ("inet6", "netlink", "packet"):
            assert inside[name] == "EAFNOSUPPORT", (name, inside)
    finally:
        machine.succeed("systemctl stop stand-in-agent-any stand-in-agent-resolver")

with subtest("the model relay leads to the credential proxy, which wants its placeholder"):
    ask = """
import os, urllib.error, urllib.request
def ask(key):
    url = os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages"
    headers = {"x-api-key": key, "content-type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, b"{}", headers), timeout=10) as r:
            return f"{r.status}_{r.read().decode().strip()}"
    except urllib.error.HTTPError as e:
        return str(e.code)
attempt("base", lambda: os.environ["ANTHROPIC_BASE_URL"])
attempt("forged", lambda: ask("sk-nanoclaw-forged"))
"""
    ask += f'attempt("issued", lambda: ask("{KEY}"))\n'
    # Control: the stand-in answers so on its socket, outside any unit.
    proxy = f"{CREDENTIALS}/proxy.sock"
    curl = f"curl -sS -X POST --unix-socket {proxy} -w '%{{http_code}}' -o /dev/null "
    assert machine.succeed(curl + f"-H 'x-api-key: {KEY}' http://proxy/v1/messages") == "200"
    assert machine.succeed(curl + "-H 'x-api-key: forged' http://proxy/v1/messages") == "401"
    inside = agent_probes("alpha", ask)
    assert inside["base"] == "http://127.0.0.1:8080", inside
    assert inside["forged"] == "401" and inside["issued"] == "200_model-ok", inside
    # The node's own 127.0.0.1:8080 is not it: the relay listens in the unit's namespace only.
    machine.fail("curl -sS --max-time 3 http://127.0.0.1:8080/")


def allocate(group: str, mib: int) -> tuple[int, str, bool]:
    """agent_probe's status, the unit's result, and whether the allocation was made."""
    script = f"b = bytearray({mib} << 20)\nprint('allocated', len(b) >> 20, flush=True)"
    status, output, result = in_agent(group, script)
    return status, result, f"allocated {mib}" in output.splitlines()


with subtest("MemoryMax OOM-kills the agent unit, and the node keeps answering"):
    assert allocate("alpha", 128) == (0, "success", True)  # control
    status, result, allocated = allocate("alpha", 384)
    log(f"384 MiB in alpha's agent unit: {result}, agent_probe's exit status {status}")
    assert result == "oom-kill" and status != 0 and not allocated, (status, result, allocated)
    # Control: beta's agent has twice the memory, and the same allocation succeeds there.
    assert allocate("beta", 384) == (0, "success", True)
    machine.succeed("true")
    assert agent_probes("alpha", 'attempt("alive", lambda: "yes")')["alive"] == "yes"

with subtest("a fork bomb in the agent unit stops at TasksMax"):
    bomb = """
import os, time
n = 0
try:
    while n < 80:
        if os.fork() == 0:
            time.sleep(3)
            os._exit(0)
        n += 1
    print("forked", n, flush=True)
except OSError as e:
    print("stopped", n, e.errno, flush=True)
"""
    # Control: on the node, outside the unit, all 80 children start.
    assert machine.succeed(f"python3 - <<'EOF'\n{bomb}\nEOF").strip() == "forked 80"
    status, output, result = in_agent("alpha", bomb)
    words = output.splitlines()[-1].split() if output else ["nothing"]
    log(f"the fork bomb in alpha's agent unit: {' '.join(words)} ({result})")
    assert result == "success" and words[0] == "stopped", (result, output)
    assert 16 <= int(words[1]) < 32 and words[2] == "11", output  # EAGAIN below TasksMax
    machine.succeed("true")

with subtest("the agent writes only to its own state and its scratch places"):
    walk = """
found = []
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ("/proc", "/sys")]
    if os.access(top, os.W_OK):
        found.append(top)
print("writable", ",".join(found), flush=True)
attempt("state", lambda: write(os.environ["HOME"] + "/probe"))
attempt("etc", lambda: write("/etc/planted"))
attempt("var-lib", lambda: write("/var/lib/planted"))
attempt("run", lambda: write("/run/planted"))
"""
    inside = agent_probes("alpha", walk)
    writable = set(inside["writable"].split(","))
    print("writable in alpha's agent unit:", sorted(writable))
    state = "/var/lib/nanoclaw-agent/alpha"
    allowed = (state, "/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")
    stray = {p for p in writable if not any(p == a or p.startswith(a + "/") for a in allowed)}
    assert not stray, f"writable in the agent unit outside its state: {sorted(stray)}"
    assert {state, "/tmp"} <= writable, sorted(writable)  # control: the walk sees them
    assert inside["state"] == "written", inside
    assert inside["etc"] == "EROFS" and inside["var-lib"] in ("EACCES", "EROFS"), inside
    assert inside["run"] in ("EACCES", "EROFS"), inside
    # It stays in the group's state, the agent user's alone.
    assert machine.succeed(f"stat -c '%U %a' {state} {state}/probe").split("\n")[:2] == [
        "nanoclaw-agent-alpha 700",
        "nanoclaw-agent-alpha 644",
    ]
    machine.fail("ls /etc/planted /var/lib/planted")

machine.succeed(
    "systemctl stop stand-in-credential-proxy 'nanoclaw-model-*.socket' 'nanoclaw-model-*.service'",
    "rm -rf /var/lib/nanoclaw-agent",
)
