-- Every change to a key, in commit order: what the changes stream replays
-- to a service that reconnects, what a server reads to learn of writes made
-- by other processes (the CLI on SQLite, other instances on PostgreSQL),
-- and what a listener reads after a reconnect instead of clearing caches.
-- `seq` is assigned under the writers' lock (one writer at a time), so its
-- order is the commit order and it has no gaps but those left by pruning.
CREATE TABLE IF NOT EXISTS auth_key_changes (
    seq BIGINT PRIMARY KEY,
    -- The changed key's SHA-256 digest, lowercase hex (never the key).
    digest TEXT NOT NULL,
    changed_at BIGINT NOT NULL
);
