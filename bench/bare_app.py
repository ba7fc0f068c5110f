"""The ingest benchmark's baseline: a bare FastAPI endpoint on the same path, taking the same body.

It reads the body and answers 202 with a small JSON object, nothing else: no auth,
no decryption, no validation, no Redis. Served by uvicorn exactly like the real app,
so the ratio real/bare is the cost of the ingest work itself.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from atlas.contract import WIDGET_LOGS_PATH

app = FastAPI(title="Atlas ingest bench baseline")


@app.post(WIDGET_LOGS_PATH, status_code=202)
async def widget_logs(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"status": "queued", "bytes": len(body)}, status_code=202)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
