-- Webhooks (issue 17, item 2): endpoints operators register for key
-- events, and the deliveries queued for them — in the database, so that a
-- delivery survives a restart and is made once across instances.
-- Portable between SQLite and PostgreSQL: text and 64-bit integers only.
CREATE TABLE IF NOT EXISTS auth_webhooks (
    -- `wh_` and 16 hex digits.
    id TEXT NOT NULL PRIMARY KEY,
    -- Where deliveries are POSTed (http or https, no user info).
    url TEXT NOT NULL,
    -- The events it receives, space-separated (`key.disabled key.leaked`).
    events TEXT NOT NULL,
    -- `key.expiring`: this many days before a key's expiry.
    expiring_days BIGINT NOT NULL,
    -- `credits.low`: when a key's credits fall below this.
    credits_below BIGINT NOT NULL,
    -- The signing secret, `whsec_…`: kept to sign with (an HMAC needs the
    -- secret itself), shown once when the endpoint is made, never read
    -- back through the API.
    secret TEXT NOT NULL,
    -- The secret before the last change, signed with too until
    -- `previous_until` (Unix milliseconds): receivers switch meanwhile.
    previous_secret TEXT,
    previous_until BIGINT,
    description TEXT NOT NULL,
    -- Unix seconds.
    created_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS auth_webhook_deliveries (
    -- `msg_` and 32 hex digits: the `webhook-id` header, the same on every
    -- attempt (receivers de-duplicate on it).
    id TEXT NOT NULL PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    -- `key.expiring`, `key.expired`, `key.disabled`, `key.rotated`,
    -- `key.leaked` or `credits.low`.
    event TEXT NOT NULL,
    -- What makes the event one: for events found by a scan, the key and
    -- the expiry or credit period (`key.expired:<id>:<expires_at>`), so
    -- that instances scanning at once queue it once; for a write's events,
    -- the message id.
    dedupe TEXT NOT NULL,
    -- The body sent, JSON: never a key or a digest.
    payload TEXT NOT NULL,
    -- The key the event is about (finished deliveries of a deleted key are
    -- pruned without waiting for `keep_until`).
    key_id TEXT,
    -- Unix milliseconds until which the row is kept, finished or not: its
    -- `dedupe` name must outlive the chance of the event recurring (a key
    -- still expiring, a credit period still low), or a scan would queue it
    -- again.
    keep_until BIGINT NOT NULL,
    -- `pending`, `delivered` or `failed` (retries exhausted).
    status TEXT NOT NULL,
    -- Attempts made.
    attempts BIGINT NOT NULL,
    -- Times in Unix MILLISECONDS: queued, next attempt due, finished.
    created_at BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    done_at BIGINT,
    -- The instance attempting it, until when (a claim that outlives its
    -- instance lapses, and another retries).
    claimed_by TEXT,
    claimed_until BIGINT,
    -- The last attempt: the receiver's HTTP status, or what failed.
    last_status BIGINT,
    last_error TEXT,
    UNIQUE (webhook_id, dedupe)
);
-- The deliverers' query: pending, due.
CREATE INDEX IF NOT EXISTS auth_webhook_deliveries_due ON auth_webhook_deliveries (status, next_at);
-- An endpoint's deliveries, newest first.
CREATE INDEX IF NOT EXISTS auth_webhook_deliveries_webhook ON auth_webhook_deliveries (webhook_id, created_at);
