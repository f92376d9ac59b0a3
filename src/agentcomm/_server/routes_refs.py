"""References over HTTP: upload raw bytes, download them streamed; both checksummed."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import msgspec
from starlette.responses import StreamingResponse

from .._errors import IntegrityError, ValidationError
from .._references import Ref
from .api import Call, route

TAG = "references"
_CHUNK = 64 * 1024


class RefOut(msgspec.Struct, kw_only=True):
    """A stored blob: `id` is "sha256:<hex of its bytes>"."""

    id: str
    size: int
    stored_size: int
    compression: str
    content_type: str
    expires_at: float | None


def _out(ref: Ref) -> RefOut:
    return RefOut(id=ref.id, size=ref.size, stored_size=ref.stored_size,
                  compression=ref.compression, content_type=ref.content_type,
                  expires_at=ref.expires_at)  # fmt: skip


@route("POST", "/v1/refs", summary="Upload a blob (the raw body; X-Checksum: sha256:<hex> is "
       "verified when sent); kept at least `ttl` seconds", tag=TAG, response=RefOut,
       query=[("ttl", "number", "Seconds the blob is kept at least (default 86400)."),
              ("content_type", "string", "Its media type.")])  # fmt: skip
async def upload(call: Call) -> RefOut:
    from .app import read_body

    data = await read_body(call.request, call.server.settings.max_body)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sent = call.request.headers.get("x-checksum")
    if sent is not None and sent != digest:
        raise IntegrityError(f"The body's checksum is {digest}, not the {sent} sent; "
                             "nothing was stored.")  # fmt: skip
    ttl = call.query_float("ttl", 86400.0)
    if not 0 < ttl <= 365 * 86400:
        raise ValidationError("ttl must be a number of seconds from 0 to a year.")
    refs = call.server.hub.refs
    ref = await refs.store(data, content_type=call.query("content_type") or
                           "application/octet-stream", ttl=ttl)  # fmt: skip
    await refs.release(ref)  # the TTL keeps it, not a hold of the server's
    return _out(ref)


@route("GET", "/v1/refs/{ref_id}", summary="Download a blob (streamed; X-Checksum header)",
       tag=TAG, kind="bytes")  # fmt: skip
async def download(call: Call) -> StreamingResponse:
    ref_id = call.path("ref_id")
    data = await call.server.hub.refs.resolve(ref_id)  # verified against its checksum

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), _CHUNK):
            yield data[i : i + _CHUNK]

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"X-Checksum": ref_id,
                                      "Content-Length": str(len(data))})  # fmt: skip
