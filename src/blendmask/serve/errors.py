"""Every error of the server as one JSON line `{"error": "..."}` with its status: our own
(`HTTPError`), the framework's (404, 405, query validation) and unexpected ones (500, logged
with the traceback on the server side only)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from blendmask.serve.uploads import HTTPError

logger = logging.getLogger("blendmask.serve")


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    one_line = " ".join(str(message).split())
    return JSONResponse({"error": one_line}, status_code=status, headers=headers)


def validation_message(exc: RequestValidationError) -> str:
    """ "conf: Input should be less than or equal to 1" for the first bad parameter."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
    return f"{where}: {first.get('msg', 'invalid value')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPError)
    async def _ours(request: Request, exc: HTTPError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _framework(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(exc))

    @app.exception_handler(NotImplementedError)
    async def _not_implemented(request: Request, exc: NotImplementedError) -> JSONResponse:
        return error_response(501, str(exc))


def internal_error(exc: BaseException) -> JSONResponse:
    """A 500 for an unexpected exception: the type for the client, the traceback in the log."""
    logger.error("internal error", exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
