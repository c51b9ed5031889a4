"""Managing scheduled tasks, for a group (through its tools) or for the operator (the CLI).

Authorization lives here, in one place: a group sees and changes only its own tasks; the
main group and the operator (source None) see and change all, and the main group may
schedule for any group. Tasks declared in the config file may be paused and resumed, but
changed or removed only there. Every refusal is a TaskRefused whose text is shown as is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from nanoclaw.host.config import GroupConfig
from nanoclaw.host.config_tasks import TaskConfig
from nanoclaw.host.records import TaskRow, TaskSpec, now_ms
from nanoclaw.host.schedule import ScheduleError, first_slot, parse_schedule
from nanoclaw.host.scheduler import to_datetime, to_ms
from nanoclaw.host.store import Store

CONTEXTS = ("group", "isolated")
MAX_PROMPT = 10_000


class TaskRefused(Exception):
    """A task operation the caller may not make, or one that makes no sense."""


class TaskService:
    def __init__(
        self,
        store: Store,
        tz: ZoneInfo,
        group: Callable[[str], GroupConfig | None],
        wake: Callable[[], None],
    ) -> None:
        self._store = store
        self._tz = tz
        self._group = group
        self._wake = wake

    def schedule(
        self,
        source: str,
        prompt: str,
        kind: str,
        value: str,
        context: str = "isolated",
        target: str | None = None,
    ) -> str:
        folder = target or source
        if folder != source and not self._is_main(source):
            raise TaskRefused("only the main group may schedule tasks for another group")
        if self._group(folder) is None:
            raise TaskRefused(f"no group named {folder!r}")
        spec = self._spec(folder, prompt, kind, value, context)
        task_id = self._store.add_task(spec, self._first_due(spec))
        self._wake()
        return f"scheduled task {task_id}: " + self._line(self._get(source, task_id))

    def declare(self, declared: Sequence[TaskConfig]) -> None:
        """Write the config file's tasks into the store (see Store.declare_tasks)."""
        specs = [
            (t.name, TaskSpec(t.group, t.prompt, t.schedule.kind, t.schedule.value, t.context))
            for t in declared
        ]
        self._store.declare_tasks([(name, spec, self._first_due(spec)) for name, spec in specs])

    def list_text(self, source: str | None) -> str:
        folder = None if self._is_main(source) else source
        tasks = [t for t in self._store.tasks(folder) if t.status != "cancelled"]
        if not tasks:
            return "no scheduled tasks"
        return "\n".join(self._line(t) for t in tasks)

    def pause(self, source: str | None, task_id: str) -> str:
        task = self._get(source, task_id)
        if task.status != "active":
            raise TaskRefused(f"task {task_id} is {task.status}, not active")
        self._store.update_task(task_id, status="paused")
        return f"paused task {task_id}"

    def resume(self, source: str | None, task_id: str) -> str:
        task = self._get(source, task_id)
        if task.status != "paused":
            raise TaskRefused(f"task {task_id} is {task.status}, not paused")
        # Slots missed while paused are skipped: the schedule restarts from now.
        self._store.update_task(task_id, status="active", next_due=self._first_due(task.spec))
        self._wake()
        return "resumed task " + self._line(self._get(source, task_id))

    def cancel(self, source: str | None, task_id: str) -> str:
        task = self._declared_elsewhere(self._get(source, task_id))
        if task.status == "cancelled":
            raise TaskRefused(f"task {task_id} is already cancelled")
        self._store.update_task(task_id, status="cancelled", next_due=None, run_requested=None)
        return f"cancelled task {task_id}"

    def update(
        self,
        source: str | None,
        task_id: str,
        prompt: str | None = None,
        kind: str | None = None,
        value: str | None = None,
        context: str | None = None,
    ) -> str:
        task = self._declared_elsewhere(self._get(source, task_id))
        if task.status in ("cancelled", "done"):
            raise TaskRefused(f"task {task_id} is {task.status}; schedule a new one instead")
        old = task.spec
        spec = self._spec(
            old.folder,
            old.prompt if prompt is None else prompt,
            kind or old.kind,
            old.schedule if value is None else value,
            context or old.context,
        )
        fields: dict[str, object] = {
            "prompt": spec.prompt,
            "kind": spec.kind,
            "schedule": spec.schedule,
            "context": spec.context,
        }
        if (spec.kind, spec.schedule) != (old.kind, old.schedule):
            fields["next_due"] = self._first_due(spec)
        self._store.update_task(task_id, **fields)
        self._wake()
        return "updated task " + self._line(self._get(source, task_id))

    def run_now(self, task_id: str) -> str:
        """The operator's `tasks run`: once, now, outside the schedule."""
        task = self._get(None, task_id)
        if task.status == "cancelled":
            raise TaskRefused(f"task {task_id} is cancelled")
        self._store.update_task(task_id, run_requested=now_ms())
        self._wake()
        return f"task {task_id} will run now"

    # --- helpers --------------------------------------------------------------

    def _is_main(self, source: str | None) -> bool:
        if source is None:
            return True
        group = self._group(source)
        return group is not None and group.main

    def _get(self, source: str | None, task_id: str) -> TaskRow:
        task = self._store.task(str(task_id))
        if task is None or not (self._is_main(source) or task.spec.folder == source):
            # A group learns nothing about other groups' tasks, not even that they exist.
            raise TaskRefused(
                f"no task {task_id!r} in this group; list_tasks shows yours"
                if source is not None
                else f"no task {task_id!r}"
            )
        return task

    def _declared_elsewhere(self, task: TaskRow) -> TaskRow:
        if task.source == "config":
            raise TaskRefused(
                f"task {task.id} is declared in the config file; change or remove it there "
                "(pausing and resuming it works here)"
            )
        return task

    def _spec(self, folder: str, prompt: str, kind: str, value: str, context: str) -> TaskSpec:
        if not prompt.strip() or len(prompt) > MAX_PROMPT:
            raise TaskRefused(f"the prompt must be 1 to {MAX_PROMPT} characters")
        if context not in CONTEXTS:
            raise TaskRefused(f"context_mode must be group or isolated, not {context!r}")
        try:
            schedule = parse_schedule(kind, value, self._tz)
        except ScheduleError as exc:
            raise TaskRefused(str(exc)) from None
        return TaskSpec(folder, prompt, schedule.kind, schedule.value, context)

    def _first_due(self, spec: TaskSpec) -> int | None:
        schedule = parse_schedule(spec.kind, spec.schedule, self._tz)
        slot = first_slot(schedule, datetime.now(UTC), self._tz)
        return None if slot is None else to_ms(slot)

    def _line(self, task: TaskRow) -> str:
        spec = task.spec
        when = (
            f", next {self._local(task.next_due)}"
            if task.status == "active" and task.next_due
            else ""
        )
        runs = self._store.runs(task.id)
        last = f", last run {runs[-1].status} {self._local(runs[-1].started_ts)}" if runs else ""
        prompt = spec.prompt if len(spec.prompt) <= 80 else spec.prompt[:79] + "…"
        schedule = parse_schedule(spec.kind, spec.schedule, self._tz).describe()
        return (
            f"{task.id} [{spec.folder}] {task.status}, {schedule}, "
            f"{spec.context} context{when}{last}: {prompt}"
        )

    def _local(self, ms: int) -> str:
        return f"{to_datetime(ms).astimezone(self._tz):%Y-%m-%d %H:%M:%S %Z}"
