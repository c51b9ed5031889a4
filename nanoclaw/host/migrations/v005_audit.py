"""Version 5: the audit trail (nanoclaw.host.audit): a row per unit a tool call ran, and one
for a call's own outcome when it ran none or was refused or failed after its units."""

SQL = """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL,              -- the rows of one tool call share it
        ts INTEGER NOT NULL,                -- ms: when the unit (or the call) started
        group_folder TEXT NOT NULL,
        session_id TEXT,                    -- NULL: the CLI had not named its session yet
        agent TEXT NOT NULL,                -- "main": the group's own agent
        tool TEXT NOT NULL,
        arguments TEXT NOT NULL,            -- JSON, redacted and bounded (audit_args)
        outcome TEXT NOT NULL,              -- systemd's Result=, or ok, refused, error
        unit TEXT,
        properties_sha256 TEXT,             -- the broker's digest of the unit's properties
        exit_status INTEGER,
        signal INTEGER,
        duration_ms INTEGER NOT NULL,
        stdout_bytes INTEGER,               -- as kept, at most the group's output limit
        stderr_bytes INTEGER,
        truncated INTEGER,                  -- 1: output was cut at the limit
        egress TEXT,                        -- JSON: the egress proxy's verdicts for the unit
        reason TEXT                         -- why it was refused or failed
    );
    CREATE INDEX audit_ts ON audit (ts);
    CREATE INDEX audit_group_ts ON audit (group_folder, ts);
    """
