-- Service credentials are a kind of their own: they may call the validate
-- endpoint and nothing else, and a validate request never accepts one as
-- a client key. Rows that were service credentials by convention (the
-- `keys:validate` scope, exactly: `replace` compares case-sensitively on
-- both engines, where SQLite's LIKE would not) become service credentials.
ALTER TABLE auth_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'client';
UPDATE auth_keys SET kind = 'service'
    WHERE length(' ' || scopes || ' ') <> length(replace(' ' || scopes || ' ', ' keys:validate ', ''));
