"""The JSON schemas of the API's bodies, for the OpenAPI document (web/openapi.py).

Response schemas forbid properties they do not list, so tests that check real responses
against them catch an undocumented field.
"""

from __future__ import annotations

from typing import Any

from dispatcher.manage.fields import EVENT_DELIVERY_FIELDS
from dispatcher.manage.validation import MAX_ID

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """A closed object: `required` properties must be present; nothing unlisted may be."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STRING: Schema = {"type": "string"}
# attempts.retry_reason (migration 007).
RETRY_REASONS = ("schedule", "retry_after", "throttle", "exhausted", "not_retryable", "gone")
BOOLEAN: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
ID: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
UUID: Schema = {"type": "string", "format": "uuid"}
TIME: Schema = {"type": "string", "format": "date-time", "description": "ISO-8601, UTC"}
ANY_JSON: Schema = {"description": "Any JSON value, stored as jsonb and sent as `data`."}
PERIOD: Schema = {
    "oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
    "description": 'Seconds, or a duration such as "90s", "15m", "24h", "7d", "1h30m".',
}
EVENT_TYPES: Schema = {
    **array(STRING),
    "description": 'Dotted names such as "customer.updated", or "*" for every type.',
}
DELIVERY_STATUS: Schema = {"enum": ["pending", "succeeded", "failed", "cancelled"]}

RATE_LIMIT: Schema = {
    "oneOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 100000}, {"type": "null"}],
    "description": "Requests per second at most; null: no limit.",
}
MAX_CONCURRENCY: Schema = {
    "oneOf": [{"type": "integer", "minimum": 1, "maximum": 1000}, {"type": "null"}],
    "description": "Attempts in flight at once over all instances; null: the daemon's"
    " per_endpoint_concurrency.",
}
RETRY_POLICY: Schema = {
    "oneOf": [{"enum": ["schedule", "exponential"]}, {"type": "null"}],
    "description": "schedule (retry_schedule) or exponential (full jitter); null: the daemon's"
    " default retry_policy.",
}
HEALTH: Schema = {
    **obj(
        {
            "state": {
                "enum": ["ok", "failing", "breaker_open", "rate_limited", "disabled"],
                "description": "The first that holds: disabled, breaker_open, failing (a failure"
                " streak), rate_limited (the limit held deliveries back in the last minute), ok.",
            },
            "consecutive_failures": INTEGER,
            "first_failure_at": {**nullable(TIME), "description": "When the streak began."},
            "last_failure_at": nullable(TIME),
            "last_error": nullable(STRING),
            "breaker": obj(
                {
                    "state": {
                        "enum": ["closed", "open", "half-open"],
                        "description": "half-open: the cool-off is over and a probe may go.",
                    },
                    "until": nullable(TIME),
                    "opened_at": nullable(TIME),
                    "trips": {**INTEGER, "description": "Cool-offs in a row."},
                }
            ),
            "rate_limited_at": {
                **nullable(TIME),
                "description": "When the rate limit last held deliveries back.",
            },
        }
    ),
}
WEBHOOK: dict[str, Schema] = {
    "id": ID,
    "service_name": STRING,
    "url": STRING,
    "description": STRING,
    "event_types": array(STRING),
    "status": {"enum": ["active", "disabled"]},
    "created_at": TIME,
    "updated_at": TIME,
    "rate_limit": RATE_LIMIT,
    "max_concurrency": MAX_CONCURRENCY,
    "retry_policy": RETRY_POLICY,
    "disabled_reason": {
        "oneOf": [{"enum": ["manual", "gone", "failing"]}, {"type": "null"}],
        "description": "Why it is disabled: by hand, a 410 Gone answer, or failing too long.",
    },
    "disabled_at": nullable(TIME),
    "health": HEALTH,
}
DELIVERY: dict[str, Schema] = {
    "id": ID,
    "message_id": UUID,
    "webhook_id": ID,
    "service_name": {**nullable(STRING), "description": "null once the webhook is deleted"},
    "event_type": nullable(STRING),
    "kind": {"enum": ["event", "resend", "test"]},
    "status": DELIVERY_STATUS,
    "attempts": INTEGER,
    "last_response_status": nullable(INTEGER),
    "last_error_kind": nullable(STRING),
    "created_at": TIME,
    "finished_at": nullable(TIME),
    "next_attempt_at": nullable(TIME),
}
RESENT = obj({"deliveries": array(obj({"id": ID, "webhook_id": ID}))})

SCHEMAS: dict[str, Schema] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details. `field` names the request field at fault.",
        "properties": {
            "type": STRING,
            "title": STRING,
            "status": INTEGER,
            "detail": STRING,
            "instance": STRING,
            "field": STRING,
        },
        "required": ["type", "title", "status", "detail"],
    },
    "Webhook": obj({**WEBHOOK, "previous_secret_expires_at": nullable(TIME)}),
    # Create and update also say when the daemon would refuse the URL's address as it
    # resolves now (the SSRF guard); the webhook is saved either way.
    "SavedWebhook": obj(
        {**WEBHOOK, "previous_secret_expires_at": nullable(TIME), "warnings": array(STRING)}
    ),
    "WebhookList": obj(
        {
            "webhooks": array(
                obj(
                    {
                        **WEBHOOK,
                        "deliveries_24h": INTEGER,
                        "failed_24h": INTEGER,
                        "succeeded_24h": INTEGER,
                        "success_rate_24h": {
                            **nullable({"type": "number", "minimum": 0, "maximum": 1}),
                            "description": "succeeded / (succeeded + failed) of the last 24"
                            " hours' deliveries; null when none finished.",
                        },
                    }
                )
            )
        }
    ),
    "DisabledWebhook": obj(
        {**WEBHOOK, "previous_secret_expires_at": nullable(TIME), "cancelled": INTEGER}
    ),
    "DeletedWebhook": obj({"id": ID, "deleted": {"const": True}, "cancelled": INTEGER}),
    "WebhookSecret": obj(
        {
            "webhook_id": ID,
            "secret": STRING,
            "previous_secret": nullable(STRING),
            "previous_secret_expires_at": nullable(TIME),
        }
    ),
    "NewWebhook": obj(
        {"service_name": STRING, "url": STRING, "event_types": EVENT_TYPES},
        {
            "description": STRING,
            "allow_unknown": BOOLEAN,
            "rate_limit": RATE_LIMIT,
            "retry_policy": RETRY_POLICY,
            "max_concurrency": MAX_CONCURRENCY,
        },
    ),
    "WebhookChanges": {
        **obj(
            {},
            {
                "service_name": STRING,
                "url": STRING,
                "description": STRING,
                "rate_limit": {**RATE_LIMIT, "description": "Requests per second; null clears."},
                "retry_policy": {**RETRY_POLICY, "description": "null: the daemon's default."},
                "max_concurrency": {
                    **MAX_CONCURRENCY,
                    "description": "Attempts in flight over all instances; null: the default.",
                },
                "event_types": {**EVENT_TYPES, "description": "Replace the whole list."},
                "add_event_types": EVENT_TYPES,
                "remove_event_types": EVENT_TYPES,
                "allow_unknown": BOOLEAN,
            },
        ),
        "minProperties": 1,
    },
    "SecretRotation": obj(
        {}, {"grace_s": {**PERIOD, "description": "How long the old secret also signs (24h)."}}
    ),
    "TestRequest": obj({}, {"event_type": STRING, "data": ANY_JSON}),
    "TestResult": obj(
        {
            "delivery_id": ID,
            "message_id": UUID,
            "event_type": STRING,
            "request": obj(
                {
                    "url": STRING,
                    "headers": {
                        "type": "object",
                        "additionalProperties": STRING,
                        "description": "As sent; the secret header's value is masked.",
                    },
                    "body": {**STRING, "description": "The exact body that was signed."},
                }
            ),
            "response": obj(
                {
                    "status": nullable(INTEGER),
                    "headers": {"type": "object", "additionalProperties": STRING},
                    "body": nullable(STRING),
                    "truncated": BOOLEAN,
                    "duration_ms": INTEGER,
                }
            ),
            "delivered": BOOLEAN,
            "error_kind": nullable(STRING),
            "error_message": nullable(STRING),
            "webhook_status": {"enum": ["active", "disabled"]},
        }
    ),
    "FailureList": obj(
        {
            "failures": array(
                obj(
                    {
                        "delivery_id": ID,
                        "message_id": UUID,
                        "event_type": nullable(STRING),
                        "attempt": INTEGER,
                        "started_at": TIME,
                        "response_status": nullable(INTEGER),
                        "error_kind": nullable(STRING),
                        "error_message": nullable(STRING),
                    }
                )
            )
        }
    ),
    "EventType": obj(
        {
            "name": STRING,
            "description": STRING,
            "sample": {"description": "JSON payload for tests, or null."},
            "created_at": TIME,
            "webhooks": {**INTEGER, "description": "How many webhooks subscribe to it."},
        }
    ),
    "EventTypeList": obj(
        {
            "event_types": array(ref("EventType")),
            "builtin_event_types": {
                **array(obj({"name": STRING, "description": STRING, "webhooks": INTEGER})),
                "description": "Operator events the daemon publishes (dispatcher.webhook.*):"
                " never in the catalog, always accepted; a webhook gets them only by naming them,"
                " never through '*'.",
            },
        }
    ),
    "NewEventType": obj({"name": STRING}, {"description": STRING, "sample": ANY_JSON}),
    "NewEvent": obj(
        {"event_type": STRING, "data": ANY_JSON},
        {
            "message_id": {
                **UUID,
                "description": "Idempotency key; generated (or derived from Idempotency-Key).",
            },
            "allow_unknown": BOOLEAN,
        },
    ),
    "Published": obj({"message_id": UUID, "created": BOOLEAN, "deliveries": INTEGER}),
    "Event": obj(
        {
            "message_id": UUID,
            "event_type": STRING,
            "data": ANY_JSON,
            "created_at": TIME,
            "deliveries": array(obj({k: DELIVERY[k] for k in EVENT_DELIVERY_FIELDS})),
        }
    ),
    "EventResend": obj({}, {"webhook_id": ID}),
    "Resent": RESENT,
    "DeliveryPage": obj(
        {
            "deliveries": array(obj(DELIVERY)),
            "next_cursor": {
                **nullable(STRING),
                "description": "Pass as `cursor` for the next page; null on the last page.",
            },
            "limit": INTEGER,
        }
    ),
    "DeliveryDetail": obj(
        {
            **DELIVERY,
            "url": nullable(STRING),
            "data": ANY_JSON,
            "leased": BOOLEAN,
            "attempts_log": array(
                obj(
                    {
                        "attempt": INTEGER,
                        "started_at": TIME,
                        "duration_ms": INTEGER,
                        "response_status": nullable(INTEGER),
                        "response_body": nullable(STRING),
                        "response_truncated": BOOLEAN,
                        "error_kind": nullable(STRING),
                        "error_message": nullable(STRING),
                        "retry_in_s": {
                            **nullable(NUMBER),
                            "description": "Seconds until the retry this attempt scheduled.",
                        },
                        "retry_reason": {
                            "enum": [*RETRY_REASONS, None],
                            "description": "What chose the retry's time (schedule, retry_after,"
                            " throttle), or why there was none (exhausted, not_retryable, gone);"
                            " null after a success.",
                        },
                    }
                )
            ),
        }
    ),
    "BulkResend": obj(
        {"since": PERIOD},
        {
            "status": {"enum": ["failed", "cancelled"], "default": "failed"},
            "webhook_id": ID,
            "dry_run": BOOLEAN,
        },
    ),
    "BulkResendResult": obj({"matched": INTEGER, "resent": INTEGER, "dry_run": BOOLEAN}),
    "Stats": obj(
        {
            "window_s": NUMBER,
            "due_now": INTEGER,
            "scheduled": INTEGER,
            "leased": INTEGER,
            "oldest_due_s": nullable(NUMBER),
            "webhooks": array(
                obj(
                    {
                        "webhook_id": ID,
                        "service_name": STRING,
                        "status": {"enum": ["active", "disabled"]},
                        "succeeded": INTEGER,
                        "failed": INTEGER,
                        "pending": INTEGER,
                    }
                )
            ),
        }
    ),
}
