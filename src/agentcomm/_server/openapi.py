"""The OpenAPI 3.1 document of the `/v1` API, generated from the declared routes and their
msgspec types (`msgspec.json.schema_components`)."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec

from .. import __version__
from .api import ENDPOINTS
from .errors import ErrorBody

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_ERRORS = {
    "401": "Unknown, revoked or missing token (type AuthenticationFailed)",
    "403": "The token does not allow this (type PermissionDenied)",
    "404": "Not found (type NotFound, UnknownAgent, ...)",
    "409": "Conflict (type VersionConflict, LeaseLost, AlreadySettled, ...)",
    "413": "The body is larger than the server's limit",
    "422": "Validation failed; `field` names the field when known",
    "429": "Rate limited; see Retry-After",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": _REF.format(name="ErrorBody")}}}}  # fmt: skip


@functools.cache
def openapi_document() -> bytes:
    """The document, encoded (built once)."""
    types: list[Any] = [ErrorBody]
    for ep in ENDPOINTS:
        types += [t for t in (ep.body, ep.response) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        params = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$"}}
            for name in re.findall(r"{(\w+)}", ep.path)
        ]  # fmt: skip
        params += [
            {"name": n, "in": "query", "required": False, "description": d, "schema": {"type": t}}
            for n, t, d in ep.query
        ]
        op: dict[str, Any] = {
            "summary": ep.summary, "tags": [ep.tag], "operationId": ep.handler.__name__ + "_"
            + ep.method.lower() + "_" + re.sub(r"\W+", "_", ep.path).strip("_"),
            "parameters": params, "security": [{"bearer": []}],
        }  # fmt: skip
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": by_type[ep.body]}}}  # fmt: skip
        if ep.raw_body:
            op["requestBody"] = {"required": False, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}}  # fmt: skip
        if ep.kind == "bytes":
            ok = {"description": "The blob's bytes",
                  "content": {"application/octet-stream": {"schema": {"type": "string",
                              "format": "binary"}}}}  # fmt: skip
        elif ep.kind == "sse":
            ok = {"description": "A Server-Sent Events stream",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}  # fmt: skip
        else:
            ok = {"description": "OK", "content": {"application/json": {
                "schema": by_type[ep.response]}}}  # fmt: skip
        op["responses"] = {"200": ok, **{k: _error(v) for k, v in _ERRORS.items()}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "agentcomm server",
            "version": __version__,
            "description": "The agentcomm HTTP API; see docs/server.md.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return msgspec.json.encode(doc)
