"""Version 3: encrypted events the bot could not decrypt yet, kept until their keys come."""

SQL = """
    CREATE TABLE undecrypted (
        event_id TEXT PRIMARY KEY,
        room_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        arrived_ts INTEGER NOT NULL,        -- ms: when the bot first saw it
        source TEXT NOT NULL,               -- the event as the homeserver sent it (JSON)
        notified_ts INTEGER                 -- ms: when the room was told; NULL: not yet
    );
    """
