"""A bare FastAPI app with Nixie's routes and constant answers.

It measures what FastAPI and uvicorn cost on their own: the benchmark runs the
same k6 script against it and against a Nixie node, and the difference is
Nixie's own work (CRDT state, storage, validation). Like Nixie's, the handlers
take the raw request instead of FastAPI-injected parameters, so both apps pay
the same framework cost per request.
"""

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

# Shaped like a real key (21 characters of the URL-safe alphabet), so the
# benchmark script cannot tell it apart from one a node made.
KEY = "V1StGXR8_Z5jdHi6B-myT"
VALUE = "1"

# A node sends the counter's metadata with every success; the step is always
# there, so the bare app carries it too and the responses weigh the same.
HEADERS = {"Nixie-Step": "1"}

app = FastAPI(title="Nixie bare baseline", openapi_url=None, docs_url=None)


@app.get("/")
async def list_keys(request: Request) -> Response:
    """Answer the key list with the one constant key."""
    return PlainTextResponse(KEY)


@app.post("/")
async def create_counter(request: Request) -> Response:
    """Answer a creation with the constant key."""
    return PlainTextResponse(KEY, status_code=201, headers=HEADERS)


@app.head("/{key}")
async def check_counter(request: Request) -> Response:
    """Answer that every counter exists."""
    return Response(status_code=204, headers=HEADERS)


@app.get("/{key}")
async def read_counter(request: Request) -> Response:
    """Answer every read with the constant value."""
    return PlainTextResponse(VALUE, headers=HEADERS)


@app.post("/{key}")
async def increment_counter(request: Request) -> Response:
    """Answer every increment with the same constant value a read returns."""
    return PlainTextResponse(VALUE, headers=HEADERS)


@app.put("/{key}")
async def set_counter(request: Request) -> Response:
    """Accept every new value without looking at it."""
    return Response(status_code=204, headers=HEADERS)


@app.patch("/{key}")
async def update_metadata(request: Request) -> Response:
    """Accept every metadata change without looking at it."""
    return Response(status_code=204, headers=HEADERS)


@app.delete("/{key}")
async def delete_counter(request: Request) -> Response:
    """Accept every deletion; like a node's, the answer carries no headers."""
    return Response(status_code=204)
