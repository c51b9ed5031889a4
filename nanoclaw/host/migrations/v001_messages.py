"""Version 1: rooms, groups, messages with their cursors and sessions, the outbox, and
the sync token."""

SQL = """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE rooms (
        room_id TEXT PRIMARY KEY,
        joined_ts INTEGER NOT NULL          -- messages older than this predate the bot
    );
    CREATE TABLE groups (
        folder TEXT PRIMARY KEY,
        room_id TEXT NOT NULL UNIQUE,
        definition TEXT NOT NULL,           -- JSON of the group's settings
        source TEXT NOT NULL CHECK (source IN ('config', 'runtime')),
        cursor INTEGER NOT NULL DEFAULT 0,  -- last message seq the agent has answered
        session_id TEXT,
        last_run_ts INTEGER,
        last_run_status TEXT
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        room_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_name TEXT NOT NULL,
        ts INTEGER NOT NULL,
        body TEXT NOT NULL,
        reply_to TEXT,
        thread_root TEXT,
        mentions_bot INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('chat', 'command', 'history', 'own')),
        handled INTEGER NOT NULL DEFAULT 0  -- commands only: already answered
    );
    CREATE INDEX messages_by_room ON messages (room_id, seq);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        txn_id TEXT NOT NULL UNIQUE,        -- Matrix transaction ID: resending is idempotent
        room_id TEXT NOT NULL,
        content TEXT NOT NULL,
        created_ts INTEGER NOT NULL,
        event_id TEXT                       -- set once the homeserver accepted it
    );
    """
