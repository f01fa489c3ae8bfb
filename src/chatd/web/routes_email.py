"""Routes: email notification settings (/me/notifications) and the signed links of the
mails (/email/verify, /email/unsubscribe: no login, the token is the credential).
docs/notifications.md, "Email (SMTP)"."""

from __future__ import annotations

from typing import Any

from quart import Response, request

from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.web import models
from chatd.web.api import Access, Api, Media
from chatd.web.client_address import client_address
from chatd.web.render import Reply

HTML = Media("text/html", {"type": "string"})

_PAGE = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
         "<meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>"
         "</head><body><h1>{title}</h1>{body}</body></html>")


def _page(title: str, body: str) -> Response:
    """A small fixed page (nothing a user wrote is in it). The token is in the URL, so
    no referrer leaves it and nothing caches it; the page runs no script."""
    response = Response(_PAGE.format(title=title, body=body), status=200,
                        content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = \
        "default-src 'none'; form-action 'self'; frame-ancestors 'none'"
    return response


def _settings(view: dict[str, Any]) -> models.NotificationSettings:
    return models.NotificationSettings(
        email=view["email"], pending_email=view["pending_email"],
        email_enabled=bool(view["email_enabled"]), email_delay_s=int(view["email_delay_s"]),
        email_available=bool(view["available"]))


def register(api: Api, services: Services) -> None:
    email = services.email

    def address() -> str | None:
        return client_address(request, services.proxies)

    @api.route("GET", "/me/notifications", summary="Your email notification settings",
               response=models.NotificationSettings)
    async def get_notifications(session: Session) -> Reply:
        return _settings(await email.get(session.user_id))

    @api.route("PATCH", "/me/notifications",
               summary="Change your email address, whether unread messages are mailed, "
                       "and after how long",
               description="A new address gets a verification link; digests go to it only "
                           "once the link is followed (until then, to the verified one). "
                           "Message text in digests: /me/notifications/previews.",
               body=models.NotificationChange, response=models.NotificationSettings,
               errors=(409, 429))
    async def change_notifications(session: Session,
                                   body: models.NotificationChange) -> Reply:
        services.ratelimits.take("messages", account=session.user_id, address=address())
        if body.email:
            # Each new address is a mail to someone who has not agreed to get it yet.
            services.ratelimits.take("email_verify", account=session.user_id,
                                     address=address())
        return _settings(await email.update(
            session.user_id, email=body.email, enabled=body.email_enabled,
            delay_s=body.email_delay_s))

    @api.route("GET", "/email/verify", access=Access.PUBLIC,
               summary="Follow a verification link: the address receives digests from now on",
               query=models.EmailLinkQuery, response=HTML, errors=(404, 429, 503))
    async def email_verify(query: models.EmailLinkQuery) -> Reply:
        services.ratelimits.take("email_links", address=address())
        await email.verify(query.token)
        return _page("Address confirmed",
                     "<p>This address now receives notifications of unread messages. "
                     "Each one has a link to stop them.</p>")

    @api.route("GET", "/email/unsubscribe", access=Access.PUBLIC,
               summary="The page of an unsubscribe link: asks to confirm (a GET changes "
                       "nothing, so link scanners unsubscribe nobody)",
               query=models.EmailLinkQuery, response=HTML, errors=(429,))
    async def email_unsubscribe_page(query: models.EmailLinkQuery) -> Reply:
        services.ratelimits.take("email_links", address=address())
        return _page("Stop email notifications?",
                     "<form method=\"post\"><input type=\"hidden\" "
                     "name=\"List-Unsubscribe\" value=\"One-Click\">"
                     "<button type=\"submit\">Stop these emails</button></form>")

    @api.route("POST", "/email/unsubscribe", access=Access.PUBLIC,
               summary="One-click unsubscribe (RFC 8058): email notifications off, no login",
               description="The mail's List-Unsubscribe URL; the body "
                           "(List-Unsubscribe=One-Click) is not needed.",
               query=models.EmailLinkQuery, response=HTML, errors=(404, 429, 503))
    async def email_unsubscribe(query: models.EmailLinkQuery) -> Reply:
        services.ratelimits.take("email_links", address=address())
        await email.unsubscribe(query.token)
        return _page("Unsubscribed",
                     "<p>No more notification emails will be sent. You can turn them on "
                     "again in the app's settings.</p>")
