"""Web: the HTTP API under /api/v1 and the console, served by `dispatcher web`."""
