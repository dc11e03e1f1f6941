"""The JSON HTTP API of `slm serve`: POST /api/complete (whole, or streamed as newline-delimited JSON),
GET /api/models and GET /api/health, on a FastAPI app that the web demo is mounted on.

Every refusal is {"error": "..."} with its status: 400 a malformed request, 404 an unknown model,
413 an oversize prompt, 429 the queue is full. Generation runs in the service's worker threads; the
event loop only awaits them, so it keeps answering while they work.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from slmkit.errors import SlmError
from slmkit.serve.completion import CompletionService, RequestError
from slmkit.serve.limits import QueueFull

log = logging.getLogger("slmkit.serve")
NDJSON = "application/x-ndjson"


def refusal(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def add_api_routes(app: FastAPI, service: CompletionService) -> None:
    """Add the API's routes to `app` (before the web demo is mounted at "/", which takes every other path)."""

    @app.post("/api/complete")
    async def complete(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as error:
            return refusal(f"the request body is not valid JSON ({error}); send an object such as "
                           f"{{\"prompt\": \"Once upon a time\"}}", 400)
        try:
            parsed = service.parse(body)
        except RequestError as error:
            return refusal(str(error), error.status)
        if parsed.stream:
            return _stream(service, parsed)
        try:
            future = service.submit(parsed)
        except QueueFull as error:
            return refusal(str(error), 429)
        try:
            result = await asyncio.wrap_future(future)
        except SlmError as error:
            return refusal(str(error), 400)
        finally:
            parsed.cancelled.set()  # a caller that went away stops its generation
        if result is None:
            return refusal("the server is stopping", 503)
        return result

    @app.get("/api/models")
    async def models():
        return service.describe()

    @app.get("/api/health")
    async def health():
        return {"status": "ok", "admitted": service.pool.admitted, "capacity": service.pool.capacity}


def _stream(service: CompletionService, parsed):
    """A streamed answer: one {"text": piece} line per piece of text as it becomes final, then the whole
    result with "done": true (or {"error": ...} when generation failed after it started)."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    done = object()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, item)
        except RuntimeError:  # the event loop has closed: the server is stopping
            parsed.cancelled.set()

    try:
        future = service.submit(parsed, on_text=put)
    except QueueFull as error:
        return refusal(str(error), 429)
    future.add_done_callback(lambda _: put(done))

    async def lines():
        try:
            while (piece := await pieces.get()) is not done:
                yield json.dumps({"text": piece}) + "\n"
            try:
                result = future.result()
            except SlmError as error:
                yield json.dumps({"error": str(error)}) + "\n"
                return
            except Exception as error:  # a bug: logged with its traceback, the caller told in one line
                log.exception("generation failed")
                yield json.dumps({"error": f"generation failed: {type(error).__name__}"}) + "\n"
                return
            if result is None:
                yield json.dumps({"error": "the server is stopping"}) + "\n"
                return
            yield json.dumps({**result, "done": True}) + "\n"
        finally:
            parsed.cancelled.set()

    return StreamingResponse(lines(), media_type=NDJSON)
