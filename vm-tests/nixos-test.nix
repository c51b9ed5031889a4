# One VM isolation scenario (vm-tests/scenarios/NAME.py) as a NixOS test, unchanged: node
# `machine` has services.nanoclaw (node.nix), node `web` holds the "public" addresses that
# vm-tests/driver.py forwards to web servers on the host. The testScript is what that
# driver runs: the globals it adds, prelude.py, then the scenario.
#
# Usage: import ./nixos-test.nix { inherit pkgs self; } ./scenarios/NAME.py
{
  pkgs,
  self,
  runNixOSTest ? pkgs.testers.runNixOSTest,
}:
scenario:
let
  inherit (pkgs) lib;

  # WEB_SERVERS in vm-tests/driver.py: port 80 of each answers "egress-ok ADDRESS\n".
  webServers = [
    "11.0.0.100"
    "11.0.0.101"
  ];
  answer = pkgs.writeText "egress-ok.py" ''
    import http.server


    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"egress-ok {self.connection.getsockname()[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


    http.server.ThreadingHTTPServer(("0.0.0.0", 80), Answer).serve_forever()
  '';

  # Before the prelude: what vm-tests/driver.py adds to the NixOS driver's globals.
  driverGlobals = ''
    web_servers = ${builtins.toJSON webServers}

    # Our driver answers with stdout and stderr together, and the scenarios match errors
    # (curl's, Python's); the NixOS driver returns stdout only, so `machine` merges them.
    _stdout_only = machine.execute


    def _with_stderr(
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: int | None = 900,
    ) -> tuple[int, str]:
        return _stdout_only(
            f"{{ {command}\n}} 2>&1",
            check_return=check_return,
            check_output=check_output,
            timeout=timeout,
        )


    setattr(machine, "execute", _with_stderr)
  '';

  # After the prelude: the module configured this node, so setup.sh must never run; the
  # web servers are up before the scenario starts, as the host's are for our driver.
  nixosNode = ''
    NODE_SETUP = "echo 'no /etc/nanoclaw/policy.json: services.nanoclaw did not write it'; false"

    start_all()
    web.wait_for_unit("egress-web.service")
    for _address in web_servers:
        machine.wait_until_succeeds(f"curl -sS --fail --max-time 5 http://{_address}/", timeout=300)
    with subtest("the module's policy is the Debian node's"):
        machine.succeed(
            "/opt/nanoclaw/venv/bin/python /etc/nanoclaw-vm-node/same-policy.py "
            "/etc/nanoclaw/policy.json /etc/nanoclaw-vm-node/policy.json"
        )
  '';
in
runNixOSTest {
  name = "nanoclaw-${lib.removeSuffix ".py" (baseNameOf scenario)}";

  nodes.machine = import ./node.nix { inherit self; };

  nodes.web =
    { lib, pkgs, ... }:
    {
      networking.useDHCP = false;
      networking.interfaces.eth1 = {
        ipv4.addresses = lib.mkForce (
          map (address: {
            inherit address;
            prefixLength = 24;
          }) webServers
        );
        ipv6.addresses = lib.mkForce [ ];
      };
      # Port 80 only: another port of the same address stays dead, as behind our driver.
      networking.firewall.allowedTCPPorts = [ 80 ];
      systemd.services.egress-web = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          ExecStart = "${pkgs.python3.interpreter} ${answer}";
          DynamicUser = true;
          AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
        };
      };
      virtualisation.memorySize = 512;
    };

  testScript = lib.concatStringsSep "\n" [
    driverGlobals
    (builtins.readFile ./prelude.py)
    nixosNode
    (builtins.readFile scenario)
  ];
}
