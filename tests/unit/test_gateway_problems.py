"""What schemathesis found (tests/integration/test_gateway_schema.py), pinned without servers:
a body that is not UTF-8 JSON, an unknown path and a method not allowed are problems too, and
the OpenAPI document declares every 4xx as the problem it is."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_gateway_api import auth, make_app


def test_what_the_router_refuses_is_a_problem_too(tmp_path: Path) -> None:
    app = make_app(tmp_path, {})
    unreadable = app.post(
        "/clusters/main/switchover",
        content=b"\xc3\x28",
        headers={**auth("oncall"), "content-type": "application/json"},
    )
    assert unreadable.status_code == 422, unreadable.text
    assert unreadable.headers["content-type"] == "application/problem+json"
    assert unreadable.json()["errors"] == [{"field": "body", "reason": "not JSON in UTF-8"}]
    for method, path, status in (("GET", "/nowhere", 404), ("PUT", "/clusters", 405)):
        resp = app.request(method, path, headers=auth("reader"))
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["status"] == status


def test_every_4xx_in_the_openapi_document_is_a_problem(tmp_path: Path) -> None:
    document = make_app(tmp_path, {}).get("/openapi.json").json()
    declared = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if code.startswith("4"):
                    declared += 1
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        code,
                    )
    assert declared > 50
    assert "HTTPValidationError" not in document["components"]["schemas"]
