"""References over HTTP: upload raw bytes, download them streamed; both checksummed."""

from __future__ import annotations

import msgspec
from starlette.responses import StreamingResponse

from .._errors import ValidationError
from .._references import Ref, stream_blob
from .api import Call, route

TAG = "references"


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


@route("POST", "/v1/refs", summary="Upload a blob, streamed (the raw body, up to the "
       "server's max_blob; header X-Checksum: sha256:<hex> is verified when sent, nothing is "
       "stored on a mismatch); kept at least `ttl` seconds", tag=TAG, response=RefOut,
       query=[("ttl", "number", "Seconds the blob is kept at least (default 86400)."),
              ("content_type", "string", "Its media type.")], raw_body=True)  # fmt: skip
async def upload(call: Call) -> RefOut:
    from .app import read_stream

    ttl = call.query_float("ttl", 86400.0)
    if not 0 < ttl <= 365 * 86400:
        raise ValidationError("ttl must be a number of seconds from 0 to a year.")
    content_type = call.query("content_type") or "application/octet-stream"
    body = read_stream(call.request, call.server.settings.max_blob, "blob")
    refs = call.server.hub.refs
    ref = await refs._store_stream(body, content_type=content_type, ttl=ttl,
                                   expected=call.request.headers.get("x-checksum"))  # fmt: skip
    await refs.release(ref)  # the TTL keeps it, not a hold of the server's
    return _out(ref)


@route("GET", "/v1/refs/{ref_id}", summary="Download a blob (streamed; X-Checksum header; a "
       "damaged blob's body ends short of Content-Length)", tag=TAG, kind="bytes")  # fmt: skip
async def download(call: Call) -> StreamingResponse:
    ref_id = call.path("ref_id")
    hub = call.server.hub
    hub._ctx.check_open()
    ref, pieces = await stream_blob(hub._ctx, ref_id)  # verified against its id as it goes
    return StreamingResponse(pieces, media_type="application/octet-stream",
                             headers={"X-Checksum": ref.id,
                                      "Content-Length": str(ref.size)})  # fmt: skip
