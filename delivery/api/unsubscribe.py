"""``/unsubscribe/{token}``: the one-click unsubscribe link in every non-critical message.

Public, like ``/inbound``: it is reached from a mailbox, and the signed token is its only
credential. ``GET`` changes nothing and shows a page with a button, because mail scanners
and link previews follow links; ``POST`` turns the category off at once (RFC 8058: mail
providers POST ``List-Unsubscribe=One-Click`` without showing anything to the recipient).
A token that is not ours gets the same 404 page whatever is wrong with it.
"""

import html
import logging

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from delivery.api.state import State
from delivery.recipients.preferences import Preferences
from delivery.recipients.unsubscribe import UnsubscribeTarget, read_token, unsubscribe

logger = logging.getLogger(__name__)

router = APIRouter(tags=["unsubscribe"])

#: The pages each route may answer with.
PAGES: dict[int | str, dict[str, object]] = {
    200: {"description": "a page for the recipient", "content": {"text/html": {}}},
    404: {
        "description": "the link is not valid (whatever is wrong with it)",
        "content": {"text/html": {}},
    },
}

#: The token is a credential in the URL: it must not leave in a Referer, be cached on the
#: way, or be indexed; the page loads nothing and posts only to itself.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
}

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title></head>
<body><main><h1>{title}</h1>{body}</main></body>
</html>
"""

NOT_VALID = "This unsubscribe link is not valid. It may have been copied incompletely."


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses=PAGES)
def confirm(token: str, state: State) -> HTMLResponse:
    """A page asking to confirm; nothing changes until its button is pressed."""
    target = read_token(state.settings, token)
    if target is None:
        return _page(404, "Unsubscribe", f"<p>{NOT_VALID}</p>")
    question = f"<p>Stop receiving {html.escape(target.describe())} at this address?</p>"
    button = (
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return _page(200, "Unsubscribe", question + button)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, responses=PAGES)
def one_click(token: str, state: State) -> HTMLResponse:
    """Unsubscribe at once. The body (``List-Unsubscribe=One-Click``) is not needed: the
    token says everything, and a POST is what no scanner sends by itself."""
    target = read_token(state.settings, token)
    if target is None:
        return _page(404, "Unsubscribe", f"<p>{NOT_VALID}</p>")
    unsubscribe(Preferences(state.log.engine), target)
    _log(target)
    done = f"<p>Done: you will no longer receive {html.escape(target.describe())} here.</p>"
    return _page(200, "Unsubscribed", done)


def _page(status: int, title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=html.escape(title), body=body), status_code=status, headers=HEADERS
    )


class _MaskToken(logging.Filter):
    """Keeps the token out of the access log: it unsubscribes whoever holds it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, path, HTTP version, status)
        if (
            isinstance(args, tuple)
            and len(args) >= 3
            and isinstance(args[2], str)
            and args[2].startswith(PREFIX)
        ):
            record.args = (*args[:2], PREFIX + "…", *args[3:])
        return True


#: The path every link starts with.
PREFIX = "/unsubscribe/"


def mask_tokens_in_access_log() -> None:
    """Make uvicorn's access log (``client - "METHOD PATH …" status``) write the path of
    an unsubscribe link without its token. Idempotent."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _MaskToken) for f in access.filters):
        access.addFilter(_MaskToken())


# Installed with the routes: any app serving them masks their tokens, however it is run.
mask_tokens_in_access_log()


def _log(target: UnsubscribeTarget) -> None:
    # Never the token (it unsubscribes whoever holds it) nor the address.
    logger.info(
        "one-click unsubscribe: %s off on %s", target.category or "everything", target.channel
    )
