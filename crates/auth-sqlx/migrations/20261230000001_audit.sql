-- The audit trail (issue 17): one record per admin write to a key or a
-- service credential, appended in the write's own transaction. Never
-- updated, never deleted, never pruned: after the migrations the store
-- adds triggers (SQLite and PostgreSQL have no common syntax for them)
-- that refuse an UPDATE or DELETE of this table.
-- Portable between SQLite and PostgreSQL: text and 64-bit integers only.
CREATE TABLE IF NOT EXISTS auth_audit (
    -- Assigned MAX(seq) + 1 under the writers' lock, like the change
    -- log's: unique, increasing in commit order. NOT NULL: on SQLite a
    -- non-integer primary key would take NULLs.
    seq BIGINT NOT NULL PRIMARY KEY,
    -- When, in Unix MILLISECONDS.
    at BIGINT NOT NULL,
    -- `admin:<fingerprint>`, `service:svc_…`, `cli:<user>` or `library`.
    actor TEXT NOT NULL,
    -- `create`, `update`, `disable`, `delete` or `rotate`.
    action TEXT NOT NULL,
    -- `key` (a client key) or `service` (a service credential).
    resource TEXT NOT NULL,
    -- The record id written (kept after the key is deleted: history).
    key_id TEXT NOT NULL,
    -- A JSON object: {"field": {"from": …, "to": …}} for the fields the
    -- write changed. Never a key, a digest or a prefix.
    changes TEXT NOT NULL,
    -- Where the write came from, when not a person (NULL for admin writes).
    source TEXT
);
-- One key's history, newest first.
CREATE INDEX IF NOT EXISTS auth_audit_key ON auth_audit (key_id, seq);
