-- Credit leases (issue 16, item 3): a batch of a key's credits taken from
-- it in the same transaction as a spend and reserved to the service that
-- asked, which spends them itself and returns what it did not spend before
-- the lease ends. A row exists iff its credits were taken from the key.
-- Portable between SQLite and PostgreSQL: text and 64-bit integers only;
-- times here are Unix MILLISECONDS (a lease lives 10 s).
CREATE TABLE IF NOT EXISTS auth_credit_leases (
    -- `ls_` and 32 random hex digits: what the service returns it by.
    id TEXT PRIMARY KEY,
    -- The key's SHA-256 digest, lowercase hex (never the key).
    digest TEXT NOT NULL,
    -- The id of the service credential that took it (`svc_…`); NULL when
    -- the validate endpoint asks for none (`--validate-auth none`). Only
    -- the same credential (or, for NULL, no credential) may return it.
    service_id TEXT,
    -- Credits taken from the key for the lease.
    granted BIGINT NOT NULL CHECK (granted >= 0),
    -- The key's `credits_period_start` right after the grant: a return
    -- gives credits back only while it is unchanged (no refill, no new
    -- credits since).
    period_start BIGINT,
    expires_at BIGINT NOT NULL,
    -- Set once, by the return (or by an admin write of the key's credits,
    -- which voids open leases with 0 returned).
    settled_at BIGINT,
    -- Credits really given back to the key (0: too late in its period).
    returned BIGINT CHECK (returned >= 0 AND returned <= granted)
);
-- Pruning: rows whose lease ended more than a day ago go with the change
-- log's pruning.
CREATE INDEX IF NOT EXISTS auth_credit_leases_expires ON auth_credit_leases (expires_at);
-- An admin write of a key's credits voids its open leases: found by digest.
CREATE INDEX IF NOT EXISTS auth_credit_leases_digest ON auth_credit_leases (digest);
