"""Version 2: scheduled tasks and their runs; a slot is claimed once, whatever happens
later."""

SQL = """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,                -- a declared task's name, or a number
        folder TEXT NOT NULL,
        prompt TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('cron', 'interval', 'once')),
        schedule TEXT NOT NULL,
        context TEXT NOT NULL CHECK (context IN ('group', 'isolated')),
        status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'done', 'cancelled')),
        source TEXT NOT NULL CHECK (source IN ('config', 'runtime')),
        next_due INTEGER,                   -- ms; the slot the scheduler waits for
        run_requested INTEGER,              -- ms; an operator's run outside the schedule
        created_ts INTEGER NOT NULL
    );
    CREATE TABLE task_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL REFERENCES tasks (id),
        slot INTEGER NOT NULL,              -- ms; the due time this run is for
        started_ts INTEGER NOT NULL,
        ended_ts INTEGER,
        status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'error', 'interrupted')),
        summary TEXT,
        error TEXT,
        UNIQUE (task_id, slot)              -- a slot is claimed once, whatever happens later
    );
    """
