-- Named queries for API tokens and console sessions, loaded once by dispatcher.manage.tokens.

-- name: create_token
INSERT INTO dispatcher.api_tokens (name, token_hash, prefix, read_only)
VALUES ($1, $2, $3, $4)
RETURNING id, name, prefix, read_only, created_at, last_used_at, revoked_at;

-- name: list_tokens
SELECT id, name, prefix, read_only, created_at, last_used_at, revoked_at
FROM dispatcher.api_tokens ORDER BY id;

-- name: revoke_token
-- Revoking twice keeps the first time; the sessions it opened end with it.
WITH revoked AS (
    UPDATE dispatcher.api_tokens SET revoked_at = coalesce(revoked_at, now())
    WHERE id = $1
    RETURNING id, name, prefix, read_only, created_at, last_used_at, revoked_at
), ended AS (
    DELETE FROM dispatcher.console_sessions WHERE token_id IN (SELECT id FROM revoked)
)
SELECT * FROM revoked;

-- name: authenticate_token
-- last_used_at is written at most once a minute, so a busy client does not write on every call.
WITH found AS (
    SELECT id, name, read_only, last_used_at FROM dispatcher.api_tokens
    WHERE token_hash = $1 AND revoked_at IS NULL
), touched AS (
    UPDATE dispatcher.api_tokens t SET last_used_at = now()
    FROM found
    WHERE t.id = found.id
      AND (found.last_used_at IS NULL OR found.last_used_at < now() - interval '1 minute')
)
SELECT id, name, read_only FROM found;

-- name: active_token_count
SELECT count(*) FROM dispatcher.api_tokens WHERE revoked_at IS NULL;

-- name: create_session
INSERT INTO dispatcher.console_sessions (session_hash, token_id, csrf_token, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8));

-- name: authenticate_session
SELECT t.id, t.name, t.read_only, s.csrf_token
FROM dispatcher.console_sessions s
JOIN dispatcher.api_tokens t ON t.id = s.token_id AND t.revoked_at IS NULL
WHERE s.session_hash = $1 AND s.expires_at > now();

-- name: end_session
DELETE FROM dispatcher.console_sessions WHERE session_hash = $1;

-- name: purge_sessions
DELETE FROM dispatcher.console_sessions WHERE expires_at <= now();
