"""The public field names of each record: the CLI's --json output and the API's bodies.

Both surfaces print the same records with the same names, so scripts can move from one to the
other. Adding a name is safe; renaming or removing one breaks callers.
"""

from __future__ import annotations

# The secret is never among them: only `webhooks show` and GET .../secret return it. Both
# surfaces add a `health` object (manage.health.health_json) after these.
WEBHOOK_FIELDS = (
    "id",
    "service_name",
    "url",
    "description",
    "event_types",
    "status",
    "created_at",
    "updated_at",
    "rate_limit",
    "max_concurrency",
    "retry_policy",
    "disabled_reason",
    "disabled_at",
)
DELIVERY_FIELDS = (
    "id",
    "message_id",
    "webhook_id",
    "service_name",
    "event_type",
    "kind",
    "status",
    "attempts",
    "last_response_status",
    "last_error_kind",
    "created_at",
    "finished_at",
    "next_attempt_at",
)
# A delivery as listed under its event: the event's own fields are already there.
EVENT_DELIVERY_FIELDS = tuple(
    f for f in DELIVERY_FIELDS if f not in ("message_id", "event_type", "next_attempt_at")
)
ATTEMPT_FIELDS = (
    "attempt",
    "started_at",
    "duration_ms",
    "response_status",
    "response_body",
    "response_truncated",
    "error_kind",
    "error_message",
    "retry_in_s",
    "retry_reason",
)
FAILURE_FIELDS = (
    "delivery_id",
    "message_id",
    "event_type",
    "attempt",
    "started_at",
    "response_status",
    "error_kind",
    "error_message",
)
EVENT_TYPE_FIELDS = ("name", "description", "sample", "created_at")
TOKEN_FIELDS = ("id", "name", "prefix", "read_only", "created_at", "last_used_at", "revoked_at")
