"""Version 4: a message's attachment (nanoclaw.host.attachment), as JSON; NULL for text."""

SQL = """
    ALTER TABLE messages ADD COLUMN attachment TEXT;
    """
