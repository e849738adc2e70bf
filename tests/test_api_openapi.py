"""The OpenAPI 3.1 document: valid, served behind auth, and listing exactly the routes served.

That real responses match it is checked by `tests.api_support.Api`, which every API test uses.
"""

from __future__ import annotations

import orjson
import pytest
from openapi_core.validation.response.exceptions import InvalidData
from openapi_spec_validator import validate

from dispatcher.web.app import create_app
from dispatcher.web.openapi import document
from tests.api_support import Api, Reply
from tests.conftest import WebApp, fast_settings

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def api(web_app: WebApp) -> Api:
    return Api(web_app)


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = document()
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_every_operation_needs_a_bearer_token_and_answers_problems() -> None:
    spec = document()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
    }
    assert spec["security"] == [{"bearerAuth": []}]
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            responses = item[method]["responses"]
            assert "security" not in item[method], (method, path)
            assert responses["401"] == {"$ref": "#/components/responses/E401"}
            assert "default" in responses
            body = item[method].get("requestBody")
            if body:
                schema = body["content"]["application/json"]["schema"]["$ref"]
                assert schema.startswith("#/components/schemas/"), (method, path)
    problem = spec["components"]["responses"]["E422"]["content"]
    assert problem == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }


async def test_the_document_lists_exactly_the_routes_the_app_serves(web_app: WebApp) -> None:
    app = create_app(fast_settings(), web_app.pool)
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/api/") and route.method != "HEAD":
            served.add((route.method.lower(), path))
    documented = {
        (method, path)
        for path, item in document()["paths"].items()
        for method in METHODS
        if method in item
    }
    assert served == documented
    assert len([r for r in served if r[1].startswith("/api/v1/")]) >= 22


async def test_the_served_document_is_the_built_one_and_needs_a_token(api: Api) -> None:
    """Any token may read it, a read-only one too."""
    reply = await api.call("GET", "/api/openapi.json")
    assert reply.status == 200
    assert reply.body == orjson.loads(orjson.dumps(document()))
    assert (await api.call("GET", "/api/openapi.json", token=None)).status == 401
    ro = await api.call("GET", "/api/openapi.json", token=api.web_app.read_only_token)
    assert ro.status == 200


async def test_the_conformance_check_catches_an_undocumented_field(api: Api) -> None:
    """The check that every API test relies on does fail on a response that breaks the spec."""
    body = {"webhooks": [{"id": 1, "secret": "whsec_leak"}]}
    leaky = Reply(200, {}, body, orjson.dumps(body))
    with pytest.raises(InvalidData):
        api.conforms("GET", "/api/v1/webhooks", leaky, "application/json")
    not_a_problem = Reply(404, {}, {"status": 404}, b'{"status": 404}')
    with pytest.raises(AssertionError):
        api.conforms("GET", "/api/v1/webhooks/1", not_a_problem, "application/json")
