-- Usage counts (issue 16, item 4): every decision about a key, per key,
-- hour and code, written in batches (one statement per flush) by the key
-- service — its own answers and what services report of theirs.
-- Portable between SQLite and PostgreSQL: text and 64-bit integers only.
CREATE TABLE IF NOT EXISTS auth_key_usage (
    -- The key's record id (kept after the key is deleted: history).
    key_id TEXT NOT NULL,
    -- The hour's start, Unix seconds (a multiple of 3600).
    hour BIGINT NOT NULL,
    -- `valid`, `disabled`, `expired`, `insufficient_scope`, `rate_limited`
    -- or `usage_exceeded`.
    code TEXT NOT NULL,
    -- A sum of signed deltas: a service moves a grant the key service
    -- counted as `valid` to the code its guard refused it with, and the
    -- two may arrive in either order. Read as at least 0.
    count BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour, code)
);
-- Pruning by age.
CREATE INDEX IF NOT EXISTS auth_key_usage_hour ON auth_key_usage (hour);
