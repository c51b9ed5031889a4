"""The agent host process: wires config, store, Matrix, router and agents, and stops cleanly.

Start-up order matters for "nothing lost, nothing twice": the first sync (full state,
from the stored token) runs before any group worker, then every group is kicked once so
messages that were pending at the last stop are answered, and the outbox is drained
after each sync.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from claude_agent_sdk import create_sdk_mcp_server

from nanoclaw.host.agent import MCP_SERVER, SYSTEM_PROMPT, AgentPool, AgentSettings
from nanoclaw.host.audit import Audit
from nanoclaw.host.audit_args import SecretFilter
from nanoclaw.host.audit_call import AuditScope
from nanoclaw.host.config import Config
from nanoclaw.host.credential_proxy import CredentialProxy, default_endpoint
from nanoclaw.host.file_out import FileSender
from nanoclaw.host.groups import GroupRegistry
from nanoclaw.host.host_tools import host_mcp_tools
from nanoclaw.host.inbox import Inbox
from nanoclaw.host.matrix_channel import MatrixChannel
from nanoclaw.host.memory import Memory
from nanoclaw.host.model_credential import model_credential
from nanoclaw.host.notify import Notifier
from nanoclaw.host.router import GroupState, Router
from nanoclaw.host.sandbox.gateway import SandboxGateway
from nanoclaw.host.sandbox.mcp import sandbox_mcp_tools
from nanoclaw.host.scheduler import Scheduler
from nanoclaw.host.store import Store
from nanoclaw.host.task_tools import task_mcp_tools
from nanoclaw.host.tasks import TaskService
from nanoclaw.host.tool_actions import HostToolActions
from nanoclaw.host.untraceable import forbid_tracing

log = logging.getLogger(__name__)

DRAIN_SECONDS = 60.0
REAPER_INTERVAL = 30.0
AUDIT_PRUNE_INTERVAL = 3600.0

MAIN_PROMPT = """\
This is the main group: its owner trusts you fully here. You may send messages to other
groups' rooms (send_message with target_group), register new rooms as groups
(register_group), write the global memory (write_memory with scope "global"), and see
and schedule tasks for any group (schedule_task with target_group).
"""


class Host:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.memory = Memory(config.data_dir)
        self._stopping = asyncio.Event()
        self._sandbox: SandboxGateway | None = None
        self.notifier = Notifier()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        config = self.config
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        access_token = config.matrix.access_token.read()
        credential = model_credential(config.model)
        self._credentials = CredentialProxy(credential, default_endpoint())
        if config.sandbox_socket is not None:
            socket, timeout = str(config.sandbox_socket), config.tool_timeout_seconds
            self._sandbox = await SandboxGateway.open(socket, timeout, str(config.egress_socket))
        store = Store(config.data_dir / "nanoclaw.db")
        known = [access_token, credential.secret] if credential else [access_token]
        self._audit = Audit(store, SecretFilter(known), config.audit_retention_days)
        self._audit.prune()
        groups = GroupRegistry(config, store)
        groups.load()
        channel = MatrixChannel(
            config.matrix.homeserver,
            config.matrix.user_id,
            access_token,
            config.matrix.owners,
            store,
            config.data_dir / "crypto" if config.matrix.encryption else None,
            config.matrix.key_wait_seconds,
        )
        self._pool = pool = AgentPool(
            lambda folder: self._settings(folder), config.idle_timeout_seconds
        )
        self._groups = groups
        self._channel = channel
        usage = self._sandbox.usage if self._sandbox is not None else None
        run_tool = self._sandbox.run if self._sandbox is not None else None
        inbox = Inbox(
            channel.download, run_tool, config.max_attachment_bytes, config.image_scaler_python
        )
        self.router = router = Router(config, store, groups, channel, pool, inbox, usage)
        scheduler = Scheduler(store, config.timezone, router, config.data_dir)
        self._tasks = TaskService(store, config.timezone, groups.get, scheduler.wake)
        self._tasks.declare(config.tasks)
        try:
            await self._credentials.start(
                str(config.credential_socket) if self._broker_for_agents() else None
            )
            await channel.connect(config.assistant_name)
            sync = asyncio.create_task(channel.sync_forever(router.notify_rooms), name="sync")
            first_sync = asyncio.create_task(channel.synced.wait())
            done, _ = await asyncio.wait({sync, first_sync}, return_when=asyncio.FIRST_COMPLETED)
            if sync in done:
                first_sync.cancel()
                sync.result()  # re-raise what stopped the sync loop
            log.info("synced; serving %d groups", len(groups.all()))
            # Matrix is synced and the broker answered (SandboxGateway.open): ready.
            self.notifier.send(READY="1", STATUS=self.status())
            heartbeat = asyncio.create_task(self.notifier.heartbeat(self.status), name="heartbeat")
            router.kick_all()
            scheduling = asyncio.create_task(scheduler.run(), name="scheduler")
            reaper = asyncio.create_task(self._reap(pool, router), name="reaper")
            pruner = asyncio.create_task(self._prune_audit(), name="audit-pruner")
            stop = asyncio.create_task(self._stopping.wait())
            # A failed scheduler stops the host too: systemd restarts it, nothing is silent.
            await asyncio.wait({sync, stop, scheduling}, return_when=asyncio.FIRST_COMPLETED)
            log.info("stopping: draining runs in progress")
            self.notifier.send(STOPPING="1", STATUS="stopping: " + self.status())
            sync.cancel()
            scheduling.cancel()  # runs already started finish in the drain
            reaper.cancel()
            pruner.cancel()
            try:
                await asyncio.wait_for(router.drain(), DRAIN_SECONDS)
            except TimeoutError:
                log.warning("runs still busy after %.0f s; stopping anyway", DRAIN_SECONDS)
            heartbeat.cancel()  # fed the watchdog through the drain
            for loop in (sync, scheduling):
                if loop.done() and not loop.cancelled() and loop.exception():
                    raise loop.exception()  # type: ignore[misc]
        finally:
            await pool.close_all()
            await channel.close()
            store.close()
            if self._sandbox is not None:
                await self._sandbox.close()
            await self._credentials.close()

    def _broker_for_agents(self) -> str | None:
        """The broker's socket when the CLIs run in agent units (nanoclaw.host.agent)."""
        socket = self.config.sandbox_socket
        return str(socket) if socket is not None and self.config.confine_agent else None

    def status(self) -> str:
        """systemd's one-line STATUS= (systemctl status nanoclaw)."""
        states = list(self.router.states().values())
        return (
            f"{len(self._groups.all())} groups; runs: {states.count(GroupState.RUNNING)} "
            f"running, {states.count(GroupState.WAITING)} waiting; "
            f"warm sessions: {self._pool.warm_count()}"
        )

    async def _reap(self, pool: AgentPool, router: Router) -> None:
        interval = min(REAPER_INTERVAL, self.config.idle_timeout_seconds / 2)
        while True:
            await asyncio.sleep(interval)
            await pool.close_idle(router.busy())

    async def _prune_audit(self) -> None:
        while True:
            await asyncio.sleep(AUDIT_PRUNE_INTERVAL)
            self._audit.prune()

    def _settings(self, folder: str) -> AgentSettings:
        group = self._groups.get(folder)
        if group is None:
            raise LookupError(f"unknown group {folder}")
        self.memory.prepare(folder)
        run_tool = self._sandbox.run if self._sandbox is not None else None
        files = FileSender(run_tool, self._channel.upload, self.router.post_contents_for)
        actions = HostToolActions(
            self._groups, self.memory, self._channel, self.router.post_for, files
        )
        tools = host_mcp_tools(folder, actions) + task_mcp_tools(folder, self._tasks)
        if self._sandbox is not None:
            tools += sandbox_mcp_tools(self._sandbox, folder)
        scope = AuditScope(folder)
        tools = self._audit.wrap(tools, scope)
        prompt = SYSTEM_PROMPT.format(name=self.config.assistant_name, folder=folder)
        if group.main:
            prompt += "\n" + MAIN_PROMPT
        prompt += "\n<group-memory>\n" + self.memory.read(folder) + "\n</group-memory>\n"
        prompt += "\n<global-memory>\n" + self.memory.read_global() + "\n</global-memory>\n"
        return AgentSettings(
            folder=folder,
            state_dir=self.config.data_dir / "sessions" / folder,
            model=group.model or self.config.model.name,
            base_url=group.base_url or self.config.model.base_url,
            credentials=self._credentials,
            system_prompt=prompt,
            tools=create_sdk_mcp_server(MCP_SERVER, tools=tools),
            tool_names=tuple(t.name for t in tools),
            audit=scope,
            broker_socket=self._broker_for_agents(),
            subagents=group.subagents,
        )


async def run_host(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    forbid_tracing()  # before the first CLI starts (nanoclaw.host.untraceable says why)
    host = Host(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, host.request_stop)
    log.info("nanoclaw host starting (pid %d)", os.getpid())
    await host.run()
