-- API keys, stored only as SHA-256 digests. Portable between SQLite and
-- PostgreSQL: text and 64-bit integers only (times in Unix seconds).
CREATE TABLE IF NOT EXISTS auth_keys (
    id TEXT PRIMARY KEY,
    -- A short display prefix of the key (e.g. `sk_live_AbC1`), never enough
    -- to use it.
    prefix TEXT NOT NULL,
    -- The key's SHA-256 digest, lowercase hex.
    digest TEXT NOT NULL,
    owner TEXT NOT NULL,
    -- Space-separated scope tokens.
    scopes TEXT NOT NULL DEFAULT '',
    rate_requests BIGINT,
    rate_window_secs BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    disabled_at BIGINT,
    last_used_at BIGINT
);

-- A lookup by digest is one indexed query.
CREATE UNIQUE INDEX IF NOT EXISTS auth_keys_digest ON auth_keys (digest);
