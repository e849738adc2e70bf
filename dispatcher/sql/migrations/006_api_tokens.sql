-- Access to the HTTP API and the console: bearer tokens, and the console's sign-in sessions.
--
-- Only a SHA-256 of each token or session id is stored. Tokens are 256 random bits, so a fast
-- hash is enough (as GitHub does for its tokens); a stolen table cannot be used to sign in.
CREATE TABLE dispatcher.api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL CHECK (name ~ '[^[:space:]]' AND length(name) <= 200),
    token_hash   bytea NOT NULL UNIQUE,
    -- The token's first characters, shown in listings so an operator can tell tokens apart.
    prefix       text NOT NULL,
    read_only    boolean NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- A console sign-in. Revoking its token ends it: every check joins api_tokens.
CREATE TABLE dispatcher.console_sessions (
    session_hash bytea PRIMARY KEY,
    token_id     bigint NOT NULL REFERENCES dispatcher.api_tokens (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires ON dispatcher.console_sessions (expires_at);
