"""The OpenAPI 3.1 document for the API, served at /api/openapi.json.

Built in Python rather than kept as a JSON file so that what the routes share (the id
parameters, the problem responses, the schemas in openapi_schemas) is written once.
`tests/test_api_openapi.py` checks that it lists exactly the routes the app serves, and that
real responses match it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from dispatcher import __version__
from dispatcher.web.openapi_schemas import (
    DELIVERY_STATUS,
    ID,
    INTEGER,
    SCHEMAS,
    STRING,
    UUID,
    Schema,
    ref,
)

V1 = "/api/v1"
PROBLEM_JSON = "application/problem+json"


# --- responses and parameters -----------------------------------------------------------

ERRORS = {
    400: "The body is not JSON.",
    401: "No valid token or session.",
    403: "A read-only token, or a cross-site request.",
    404: "The id names nothing (an id that cannot name anything, too).",
    409: "The change conflicts with what is stored.",
    413: "The body is larger than the server accepts.",
    415: "The body is not sent as application/json.",
    422: "A field is missing, of the wrong type, or breaks a rule; `field` names it.",
    503: "The database is unreachable; try again.",
}


def problem(description: str) -> Schema:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": ref("Problem")}}}


def ok(schema: str | None, description: str = "OK") -> Schema:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def operation(
    operation_id: str,
    summary: str,
    responses: dict[int, Schema],
    errors: tuple[int, ...] = (),
    body: str | None = None,
    body_required: bool = True,
    parameters: list[Schema] | None = None,
) -> Schema:
    """One operation; every one can answer 401, 403 and 503, and a problem by default."""
    codes = sorted({401, 403, 503, *errors, *((400, 413, 415, 422) if body else ())})
    op: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {
            **{str(code): response for code, response in responses.items()},
            **{str(code): {"$ref": f"#/components/responses/E{code}"} for code in codes},
            "default": problem("Any other error, as a problem document."),
        },
    }
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return op


def path_param(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


WEBHOOK_ID = path_param("webhook_id", ID, "The webhook's id.")
DELIVERY_ID = path_param("delivery_id", ID, "The delivery's id.")
MESSAGE_ID = path_param("message_id", UUID, "The event's message id.")
WRITE = " Needs a read-write token."


def paths() -> dict[str, Schema]:
    webhook = V1 + "/webhooks/{webhook_id}"
    return {
        V1 + "/webhooks": {
            "get": operation(
                "list_webhooks",
                "List webhooks with their last 24 hours' counts.",
                {200: ok("WebhookList")},
            ),
            "post": operation(
                "create_webhook",
                "Create a webhook; it is active at once." + WRITE,
                {201: ok("SavedWebhook", "Created; Location names it.")},
                errors=(409,),
                body="NewWebhook",
            ),
        },
        webhook: {
            "parameters": [WEBHOOK_ID],
            "get": operation(
                "get_webhook", "Read a webhook (never its secret).", {200: ok("Webhook")}, (404,)
            ),
            "patch": operation(
                "patch_webhook",
                "Change the name, URL, description or event types, in one transaction." + WRITE,
                {200: ok("SavedWebhook")},
                errors=(404, 409),
                body="WebhookChanges",
            ),
            "delete": operation(
                "delete_webhook",
                "Delete a webhook; its pending deliveries are cancelled, its log kept." + WRITE,
                {200: ok("DeletedWebhook")},
                errors=(404,),
            ),
        },
        webhook + "/secret": {
            "parameters": [WEBHOOK_ID],
            "get": operation(
                "get_secret",
                "Read the signing secret, and the previous one during its grace period." + WRITE,
                {200: ok("WebhookSecret")},
                errors=(404,),
            ),
        },
        webhook + "/rotate-secret": {
            "parameters": [WEBHOOK_ID],
            "post": operation(
                "rotate_secret",
                "Make a new secret; the old one also signs for grace_s (default 24h, at most 7d)."
                + WRITE,
                {200: ok("Webhook")},
                errors=(404,),
                body="SecretRotation",
                body_required=False,
            ),
        },
        webhook + "/enable": {
            "parameters": [WEBHOOK_ID],
            "post": operation(
                "enable_webhook",
                "Start sending again; what was missed is not replayed." + WRITE,
                {200: ok("Webhook")},
                errors=(404, 400, 415, 422),
            ),
        },
        webhook + "/disable": {
            "parameters": [WEBHOOK_ID],
            "post": operation(
                "disable_webhook",
                "Stop sending; pending deliveries are cancelled and counted." + WRITE,
                {200: ok("DisabledWebhook")},
                errors=(404, 400, 415, 422),
            ),
        },
        webhook + "/test": {
            "parameters": [WEBHOOK_ID],
            "post": operation(
                "test_webhook",
                "Send a test event now and return the request and the response." + WRITE,
                {200: ok("TestResult", "The test ran; `delivered` says whether it was accepted.")},
                errors=(404,),
                body="TestRequest",
                body_required=False,
            ),
        },
        webhook + "/failures": {
            "parameters": [WEBHOOK_ID],
            "get": operation(
                "list_failures",
                "The webhook's most recent failed attempts, newest first.",
                {200: ok("FailureList")},
                errors=(404, 422),
                parameters=[
                    query(
                        "limit",
                        {**INTEGER, "minimum": 1, "maximum": 500, "default": 20},
                        "How many.",
                    )
                ],
            ),
        },
        V1 + "/event-types": {
            "get": operation(
                "list_event_types", "List the event-type catalog.", {200: ok("EventTypeList")}
            ),
            "post": operation(
                "add_event_type",
                "Add a type to the catalog. While the catalog is empty, any type may be used."
                + WRITE,
                {201: ok("EventType", "Created.")},
                errors=(409,),
                body="NewEventType",
            ),
        },
        V1 + "/event-types/{name}": {
            "parameters": [path_param("name", STRING, "The event type.")],
            "delete": operation(
                "remove_event_type",
                "Remove a type from the catalog; webhooks keep their subscriptions." + WRITE,
                {204: ok(None, "Removed.")},
                errors=(404,),
            ),
        },
        V1 + "/events": {
            "post": operation(
                "publish_event",
                "Publish an event, idempotent on message_id or the Idempotency-Key header." + WRITE,
                {
                    201: ok("Published", "Published now."),
                    200: ok("Published", "Already published with this id: nothing new."),
                },
                errors=(409,),
                body="NewEvent",
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {**STRING, "minLength": 1, "maxLength": 255},
                        "description": "Instead of message_id: the message id is uuid5 of this"
                        " key in a fixed namespace, so a retry names the same event.",
                    }
                ],
            ),
        },
        V1 + "/events/{message_id}": {
            "parameters": [MESSAGE_ID],
            "get": operation(
                "get_event", "Read an event and its deliveries.", {200: ok("Event")}, (404,)
            ),
        },
        V1 + "/events/{message_id}/resend": {
            "parameters": [MESSAGE_ID],
            "post": operation(
                "resend_event",
                "Resend an event as new deliveries: to webhook_id, or to every active webhook"
                " that had it." + WRITE,
                {200: ok("Resent")},
                errors=(404,),
                body="EventResend",
                body_required=False,
            ),
        },
        V1 + "/deliveries": {
            "get": operation(
                "list_deliveries",
                "List deliveries newest first, a page at a time.",
                {200: ok("DeliveryPage")},
                errors=(422,),
                parameters=[
                    query("webhook_id", ID, "Only this webhook."),
                    query("status", DELIVERY_STATUS, "Only deliveries in this state."),
                    query("event_type", STRING, "Only events of this type."),
                    query("since", STRING, 'Only deliveries this recent: seconds or "24h".'),
                    query(
                        "limit",
                        {**INTEGER, "minimum": 1, "maximum": 500, "default": 50},
                        "Page size.",
                    ),
                    query("cursor", STRING, "next_cursor from the previous page."),
                ],
            ),
        },
        V1 + "/deliveries/resend": {
            "post": operation(
                "bulk_resend",
                "Resend finished deliveries in bulk, or count them with dry_run." + WRITE,
                {200: ok("BulkResendResult")},
                errors=(404,),
                body="BulkResend",
            ),
        },
        V1 + "/deliveries/{delivery_id}": {
            "parameters": [DELIVERY_ID],
            "get": operation(
                "get_delivery",
                "Read a delivery with every attempt.",
                {200: ok("DeliveryDetail")},
                (404,),
            ),
        },
        V1 + "/deliveries/{delivery_id}/resend": {
            "parameters": [DELIVERY_ID],
            "post": operation(
                "resend_delivery",
                "Resend this delivery's event to its webhook, as a new delivery." + WRITE,
                {200: ok("Resent")},
                errors=(404, 400, 415, 422),
            ),
        },
        V1 + "/stats": {
            "get": operation(
                "stats",
                "Queue depth, the oldest due delivery's age, and outcomes per webhook.",
                {200: ok("Stats")},
                errors=(422,),
                parameters=[query("window", STRING, 'Period for the per-webhook counts ("24h").')],
            ),
        },
        "/api/openapi.json": {
            "get": operation(
                "openapi_document",
                "This document.",
                {
                    200: {
                        "description": "The OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            ),
        },
    }


@cache
def document() -> dict[str, Any]:
    """The whole document; built once, and never changed after."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "webhook-dispatcher API",
            "version": __version__,
            "description": (
                "Manage webhooks, publish and resend events, and read the delivery log."
                " Every request needs `Authorization: Bearer <token>` (`dispatcher tokens"
                " create`); read-only tokens may use every GET but the secret. Errors are"
                " RFC 9457 problem documents."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
            "responses": {f"E{code}": problem(text) for code, text in ERRORS.items()},
        },
    }
