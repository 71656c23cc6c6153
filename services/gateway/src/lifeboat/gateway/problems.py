"""Errors as `application/problem+json` (RFC 9457): a type, a title, the status, a detail a
person can act on, and for a 422 each field with its reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

MEDIA_TYPE = "application/problem+json"


class FieldProblem(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str = Field(description="where: e.g. body.reason, query.limit, path.cluster")
    reason: str


class ProblemDetail(BaseModel):
    """RFC 9457 problem details; extra members depend on the problem."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None


class Problem(Exception):
    """Raise to answer with a problem; `extra` members are added to the body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers
        self.extra = extra


def invalid(field: str, reason: str) -> Problem:
    """A 422 the route finds itself, shaped like a validation error's."""
    return Problem(
        422,
        "Unprocessable Content",
        f"{field}: {reason}",
        errors=[{"field": field, "reason": reason}],
    )


def problem_response(
    request: Request,
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
}
# What FastAPI says (a 400) of a body it cannot read as JSON at all, e.g. not UTF-8.
_UNREADABLE_BODY = "There was an error parsing the body"


def install(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(
            request,
            exc.status,
            exc.title,
            exc.detail,
            type_=exc.type,
            headers=exc.headers,
            **exc.extra,
        )

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's class: FastAPI's subclasses it, and the router raises Starlette's own
        # (an unknown path, a method not allowed, a body it cannot read).
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400 and exc.detail == _UNREADABLE_BODY:
            reason = "not JSON in UTF-8"
            return problem_response(
                request,
                422,
                "Unprocessable Content",
                f"body: {reason}",
                errors=[{"field": "body", "reason": reason}],
            )
        title = _TITLES.get(exc.status_code, "Error")
        return problem_response(
            request, exc.status_code, title, str(exc.detail), headers=exc.headers
        )

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "reason": e.get("msg", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return problem_response(
            request, 422, "Unprocessable Content", detail or "invalid request", errors=errors
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_invalid)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems_only(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def problems_only(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the API answers: every 4xx is a problem (`application/problem+json`),
    including the 422 FastAPI adds on its own to each operation with parameters (declared as
    its `HTTPValidationError` in `application/json`, which this API never sends)."""
    problem = {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}
    for operation in (op for item in document.get("paths", {}).values() for op in item.values()):
        for code, response in operation.get("responses", {}).items():
            if code.startswith("4"):
                response["content"] = {MEDIA_TYPE: problem}
    schemas = document.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these problem codes."""
    described = {
        401: "no token, or an unknown one",
        403: "the token's role is too weak",
        404: "no such cluster, node, operation, backup or file set",
        409: "refused, with the answering service's reason",
        422: "invalid request: each field with its reason",
    }
    return {
        code: {
            "model": ProblemDetail,
            "description": described.get(code, "problem"),
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}},
        }
        for code in codes
    }
