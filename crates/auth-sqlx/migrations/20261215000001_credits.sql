-- Usage credits (issue 16). A key with `credits_remaining` NULL has no
-- credit limit; the other three columns are then NULL too. With a refill,
-- `credits_period_start` (Unix seconds) is the start of the current refill
-- period: at each whole `credits_refill_secs` after it, remaining is set to
-- `credits_refill_amount` — computed by the spending statement itself from
-- these columns (no job), so every instance agrees.
-- The checks are a last line: the statements never write a negative
-- remaining or a zero interval (a zero would divide by zero in the spend).
ALTER TABLE auth_keys ADD COLUMN credits_remaining BIGINT CHECK (credits_remaining >= 0);
ALTER TABLE auth_keys ADD COLUMN credits_refill_amount BIGINT CHECK (credits_refill_amount > 0);
ALTER TABLE auth_keys ADD COLUMN credits_refill_secs BIGINT CHECK (credits_refill_secs > 0);
ALTER TABLE auth_keys ADD COLUMN credits_period_start BIGINT;
