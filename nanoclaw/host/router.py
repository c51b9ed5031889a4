"""From stored messages to agent runs: one worker per group, a global cap on runs.

A group's worker is the only thing that touches its cursor and session, so a group never
has two runs at once; messages that arrive while it runs are taken by the same worker
into the same warm session as the next turn. Runs across groups share a FIFO semaphore.
Replies go through the outbox together with the cursor they answer (see store.py). What
to answer next is nanoclaw.host.next_work; /status is nanoclaw.host.status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from nanoclaw.broker.protocol import UsageReport
from nanoclaw.host.agent import AgentError, AgentPool, UnknownSession
from nanoclaw.host.config import Config, GroupConfig
from nanoclaw.host.formatting import render_message
from nanoclaw.host.groups import GroupRegistry
from nanoclaw.host.inbox import Image, Inbox, NotShown
from nanoclaw.host.next_work import Batch, Command, next_work
from nanoclaw.host.prompt import PromptMessage, build_prompt, prompt_message, task_prompt
from nanoclaw.host.records import InboundMessage, OutboxEntry, RunClaim, StoredMessage, TaskRun
from nanoclaw.host.sandbox.client import SandboxError
from nanoclaw.host.status import GroupStatus, render_status
from nanoclaw.host.store import Store
from nanoclaw.host.triggers import is_triggered

log = logging.getLogger(__name__)

STATUS_CALLS = 5  # the last tool calls /status shows


class Channel(Protocol):
    user_id: str

    async def deliver(self, entries: Sequence[OutboxEntry]) -> None: ...

    def typing(self, room_id: str) -> Any: ...

    async def mark_read(self, room_id: str, event_id: str) -> None: ...

    async def ensure_joined(self, room_id: str) -> None: ...

    def room_name(self, room_id: str) -> str | None: ...


class GroupState(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting for a slot"
    RUNNING = "running"


@dataclass
class ActiveRun:
    """What a run answers: replies sent during it move the cursor to `last_seq`."""

    folder: str
    room_id: str
    last_seq: int
    thread_root: str | None
    sent: bool = False


@dataclass
class _Worker:
    task: asyncio.Task[None]
    state: GroupState = GroupState.IDLE
    dirty: bool = False
    active: ActiveRun | None = field(default=None)


class Router:
    def __init__(
        self,
        config: Config,
        store: Store,
        groups: GroupRegistry,
        channel: Channel,
        pool: AgentPool,
        inbox: Inbox,
        workspace_usage: Callable[[], Awaitable[UsageReport]] | None = None,
    ) -> None:
        self._config = config
        self._inbox = inbox
        self._workspace_usage = workspace_usage  # from the broker, when there is one
        self._store = store
        self._groups = groups
        self._channel = channel
        self._pool = pool
        self._slots = asyncio.Semaphore(config.max_concurrent_runs)
        self._workers: dict[str, _Worker] = {}
        self._claims: dict[str, deque[RunClaim]] = {}  # scheduled runs, before messages

    # --- scheduling -----------------------------------------------------------

    def notify_rooms(self, room_ids: Sequence[str]) -> None:
        for room_id in room_ids:
            group = self._groups.for_room(room_id)
            if group is None:
                log.debug("ignoring unregistered room", extra={"room_id": room_id})
            else:
                self.kick(group.folder)

    def kick_all(self) -> None:
        for group in self._groups.all():
            self.kick(group.folder)

    def kick(self, folder: str) -> None:
        worker = self._workers.get(folder)
        if worker is not None and not worker.task.done():
            worker.dirty = True
            return
        task = asyncio.create_task(self._work(folder), name=f"group-{folder}")
        self._workers[folder] = _Worker(task)

    def busy(self) -> set[str]:
        return {f for f, w in self._workers.items() if not w.task.done()}

    def states(self) -> dict[str, GroupState]:
        return {f: w.state for f, w in self._workers.items() if not w.task.done()}

    async def drain(self) -> None:
        """Wait for the runs in progress; used for a graceful stop."""
        tasks = [w.task for w in self._workers.values() if not w.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _work(self, folder: str) -> None:
        worker = self._workers[folder]
        holding = False
        try:
            while True:
                worker.dirty = False
                work = self._next_work(folder)
                if work is None:
                    if worker.dirty:
                        continue
                    return
                if isinstance(work, Command):
                    await self._command(folder, work.message)
                    continue
                if not holding:
                    worker.state = GroupState.WAITING
                    await self._slots.acquire()
                    holding = True
                worker.state = GroupState.RUNNING
                if isinstance(work, RunClaim):
                    await self._run_task(folder, worker, work)
                    continue
                if not await self._run(folder, worker, work) and not worker.dirty:
                    return  # failed: wait for new messages or a restart, do not spin
        except Exception:
            log.exception("group worker crashed", extra={"group": folder})
        finally:
            worker.state = GroupState.IDLE
            if holding:
                self._slots.release()

    def _next_work(self, folder: str) -> RunClaim | Batch | Command | None:
        claims = self._claims.get(folder)
        if claims:
            return claims.popleft()
        group = self._groups.get(folder)
        if group is None:
            return None
        owners = self._config.matrix.owners
        choice = next_work(
            self._store.pending(folder, group.room_id, self._config.max_prompt_messages),
            lambda message: group.sender_allowed(message.sender, owners),
            lambda item: self._triggers(group, item),
        )
        for item in choice.dropped:
            log.info("ignoring command from a sender not allowed here", extra={"group": folder})
            self._store.mark_command_handled(item.message.event_id)
        return choice.work

    def _triggers(self, group: GroupConfig, item: StoredMessage) -> bool:
        replied = self._store.message(item.message.reply_to) if item.message.reply_to else None
        return is_triggered(
            group,
            item.message,
            self._config.assistant_name,
            replied.sender if replied else None,
            self._channel.user_id,
        )

    # --- runs -----------------------------------------------------------------

    async def _run(self, folder: str, worker: _Worker, batch: Batch) -> bool:
        group = self._groups.get(folder)
        assert group is not None
        run = ActiveRun(
            folder, group.room_id, batch.messages[-1].seq, batch.trigger.message.thread_root
        )
        worker.active = run
        received = [await self._received(run, item.message) for item in batch.messages]
        messages = [message for message, _ in received]
        images = [image for _, image in received if image is not None]
        prompt = build_prompt(
            [self._shown(message) for message in messages],
            self._config.timezone,
            self._channel.room_name(group.room_id),
        )
        started = datetime.now()
        log.info("agent run starts with %d messages", len(batch.messages), extra={"group": folder})
        try:
            await self._channel.mark_read(group.room_id, batch.messages[-1].message.event_id)
            async with self._channel.typing(group.room_id):
                try:
                    text = await self._ask(run, prompt, isolated=False, images=images)
                except AgentError as exc:
                    await self._fail(run, str(exc))
                    return False
                await self._post(run, text, room_id=group.room_id)
                self._store.advance_cursor(folder, run.last_seq)
                self._store.record_run(folder, "ok")
                elapsed = (datetime.now() - started).total_seconds()
                log.info(
                    "agent run done in %.2f s",
                    elapsed,
                    extra={"group": folder, "duration_ms": round(elapsed * 1000)},
                )
                return True
        finally:
            worker.active = None

    async def _ask(
        self, run: ActiveRun, prompt: str, isolated: bool, images: Sequence[Image] = ()
    ) -> str:
        """One agent turn with the configured retries; raises AgentError once it gives up.

        The group's own session is resumed from the store and its new id kept; an isolated
        turn gets a fresh session of its own, closed afterwards.
        """
        folder = run.folder
        session = self._pool.isolated(folder) if isolated else self._pool.session(folder)
        attempts = self._config.model.max_attempts
        try:
            for attempt in range(1, attempts + 1):
                row = self._store.group(folder)
                resume = None if isolated or row is None else row.session_id
                try:
                    reply = await session.ask(
                        prompt, resume, self._config.model.run_timeout_seconds, images
                    )
                except UnknownSession as exc:
                    log.warning(
                        "session no longer known to the CLI, starting a fresh one: %s",
                        exc,
                        extra={"group": folder},
                    )
                    self._store.set_session(folder, None)
                    continue
                except AgentError as exc:
                    log.warning(
                        "agent run failed (attempt %d of %d): %s",
                        attempt,
                        attempts,
                        exc,
                        extra={"group": folder},
                    )
                    if run.sent or not exc.retryable or attempt == attempts:
                        raise
                    await asyncio.sleep(self._config.model.retry_base_seconds * 2 ** (attempt - 1))
                    continue
                if not isolated:
                    self._store.set_session(folder, reply.session_id)
                return reply.text
            raise AgentError("the session could not be resumed")
        finally:
            if isolated:
                await session.close()

    # --- scheduled tasks: the scheduler's Runner -------------------------------

    def start(self, claim: RunClaim) -> None:
        """Queue a claimed slot for its group's worker, ahead of chat messages."""
        self._claims.setdefault(claim.task.spec.folder, deque()).append(claim)
        self.kick(claim.task.spec.folder)

    async def interrupted(self, run: TaskRun) -> None:
        task = self._store.task(run.task_id)
        group = self._groups.get(task.spec.folder) if task else None
        note = (
            f"⚠️ Scheduled task {run.task_id} was interrupted by a restart and is not run "
            "again for this time; it goes on at its next time."
        )
        room_id = group.room_id if group else ""
        contents = render_message(note, None) if group else []
        error = "the host stopped during the run"
        entries = self._store.finish_run(run.id, "interrupted", room_id, contents, error=error)
        await self._channel.deliver(entries)

    async def _run_task(self, folder: str, worker: _Worker, claim: RunClaim) -> None:
        task, group = claim.task, self._groups.get(folder)
        context = {"group": folder, "task_id": task.id}
        if group is None:
            self._store.finish_run(claim.run_id, "error", "", [], error="the group is gone")
            return
        run = worker.active = ActiveRun(folder, group.room_id, 0, None)
        prompt = task_prompt(task.id, claim.slot, task.spec.prompt, self._config.timezone)
        log.info("task run starts (%s context)", task.spec.context, extra=context)
        status, error = "ok", None
        try:
            async with self._channel.typing(group.room_id):
                text = await self._ask(run, prompt, isolated=task.spec.context == "isolated")
        except AgentError as exc:
            status, error = "error", str(exc)
            text = f"⚠️ Scheduled task {task.id} failed: {exc}"
        finally:
            worker.active = None
        entries = self._store.finish_run(
            claim.run_id,
            status,
            group.room_id,
            render_message(text, None),
            summary=text[:200] if status == "ok" else None,
            error=error,
        )
        log.info("task run %s", status, extra=context)
        await self._channel.deliver(entries)

    async def _fail(self, run: ActiveRun, reason: str) -> None:
        self._store.record_run(run.folder, f"error: {reason}"[:500])
        note = f"⚠️ I could not answer: {reason}\n\n" + (
            "" if run.sent else "Your messages are kept; I will try again with the next one."
        )
        entries = self._store.enqueue_replies(run.room_id, render_message(note, run.thread_root))
        await self._channel.deliver(entries)

    async def _post(self, run: ActiveRun, text: str, room_id: str) -> None:
        """Queue a reply (moving the cursor if it is the run's own room) and send it."""
        contents = render_message(text, run.thread_root if room_id == run.room_id else None)
        await self._post_contents(run, contents, room_id)

    async def _post_contents(
        self, run: ActiveRun, contents: Sequence[dict[str, Any]], room_id: str
    ) -> None:
        if not contents:
            return
        cursor = (run.folder, run.last_seq) if room_id == run.room_id else None
        entries = self._store.enqueue_replies(room_id, contents, cursor=cursor)
        if cursor is not None:
            run.sent = True
        await self._channel.deliver(entries)

    async def _received(
        self, run: ActiveRun, message: InboundMessage
    ) -> tuple[InboundMessage, Image | None]:
        """The message with its file put into the group's inbox, or the reason it is not
        there, and an image's block, or why there is none. What went wrong is said in the
        room, once (it is kept with the message before it is said): the agent answers either
        way."""
        if message.attachment is None:
            return message, None
        received = await self._inbox.receive(run.folder, message.attachment)
        if received != message.attachment:
            self._store.record_attachment(message.event_id, received)
            if received.refused is not None:
                why = received.refused
                await self._notice(run, f"I could not take the file {received.name}: {why}.")
        image = None
        if received.not_shown is None:
            try:
                image = await self._inbox.image(run.folder, received)
            except NotShown as why:
                received = dataclasses.replace(received, not_shown=str(why))
                self._store.record_attachment(message.event_id, received)
                await self._notice(
                    run, f"I cannot look at the image {received.name}: {why}. It is in my inbox."
                )
        return dataclasses.replace(message, attachment=received), image

    async def _notice(self, run: ActiveRun, text: str) -> None:
        contents = render_message("⚠️ " + text, run.thread_root)
        await self._channel.deliver(self._store.enqueue_replies(run.room_id, contents))

    def _shown(self, message: InboundMessage) -> PromptMessage:
        quoted = self._store.message(message.reply_to) if message.reply_to else None
        return prompt_message(message, quoted)

    # --- room commands --------------------------------------------------------

    async def _command(self, folder: str, item: StoredMessage) -> None:
        group = self._groups.get(folder)
        assert group is not None
        command = item.message.body.strip().lower()
        cursor: tuple[str, int] | None = None
        if command == "/new":
            await self._pool.reset(folder)
            self._store.set_session(folder, None)
            cursor = (folder, item.seq)
            text = "Started a new session. The conversation so far is forgotten; the memory stays."
            log.info("session reset by /new", extra={"group": folder})
        else:
            text = await self._status(folder)
        entries = self._store.enqueue_replies(
            group.room_id,
            render_message(text, item.message.thread_root),
            cursor=cursor,
            command_event=item.message.event_id,
        )
        await self._channel.deliver(entries)

    def _waiting_for_keys(self, folder: str) -> tuple[int, int | None]:
        group = self._groups.get(folder)
        return self._store.waiting_in(group.room_id) if group is not None else (0, None)

    async def _status(self, folder: str) -> str:
        workspace: UsageReport | str | None = None
        if self._workspace_usage is not None:
            try:
                workspace = await self._workspace_usage()
            except SandboxError as error:
                workspace = str(error)
        states = self.states()
        return render_status(
            GroupStatus(
                folder=folder,
                row=self._store.group(folder),
                running=sorted(f for f, s in states.items() if s is GroupState.RUNNING),
                waiting=sorted(f for f, s in states.items() if s is GroupState.WAITING),
                slots=self._config.max_concurrent_runs,
                warm=self._pool.is_warm(folder),
                agent_unit=self._pool.unit_of(folder),
                task_statuses=[task.status for task in self._store.tasks(folder)],
                waiting_for_keys=self._waiting_for_keys(folder),
                workspace=workspace,
                timezone=self._config.timezone,
                recent_calls=self._store.audit_rows(folder, limit=STATUS_CALLS),
            )
        )

    # --- for the agent's host tools (nanoclaw.host.tool_actions) ----------------

    async def post_for(self, source: str, text: str, room_id: str) -> None:
        """Post on behalf of `source`: as part of its run if it is in one (a reply in its
        own room then moves its cursor), else on its own."""
        await self._post(self._run_of(source, room_id), text, room_id=room_id)

    async def post_contents_for(
        self, source: str, contents: Sequence[dict[str, Any]], room_id: str
    ) -> None:
        """post_for with the events' contents made already (a file's)."""
        await self._post_contents(self._run_of(source, room_id), contents, room_id)

    def _run_of(self, source: str, room_id: str) -> ActiveRun:
        worker = self._workers.get(source)
        run = worker.active if worker else None
        if run is None:
            origin = self._groups.get(source)
            run = ActiveRun(source, origin.room_id if origin else room_id, 0, None)
        return run
