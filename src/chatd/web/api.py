"""Route declarations: one per operation, the single source of what it serves and publishes.

    @api.route("POST", "/groups/{conversation_id}/add", summary="Add members (admins)",
               body=models.UserIds, response=models.Conversation, errors=(403, 404, 409))
    async def add_members(session: Session, conversation_id: int,
                          body: models.UserIds) -> Reply: ...

`Api` registers the handler with quart under a view that does, in order: authentication
(the declared `access`; a user route gets the `Session`), the JSON body's decoding under
the edge rules, the path parameters (`models.PATH_PARAMETERS`), the body and query models.
The handler gets them as keyword arguments, calls a service and returns a `Reply`, which
the view checks against the declaration (status and model) before it is written. The
same declarations make /openapi.json (web/openapi.py), so a route cannot serve what the
document does not say, or the reverse.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quart import Request, Response, request
from quart.typing import ResponseReturnValue
from quart_trio import QuartTrio
from werkzeug.routing import BaseConverter

from chatd.config import Config
from chatd.errors import BadRequest
from chatd.protocol import edge
from chatd.services.users import Users
from chatd.web import models
from chatd.web.auth import authenticate, require_admin
from chatd.web.render import NoContent, Reply
from chatd.web.schema import Limits, Model

Handler = Callable[..., Awaitable[Reply]]


class Access(enum.Enum):
    """Who may call an operation."""

    #: Anyone (health, the document, registration, login).
    PUBLIC = "public"
    #: A user's bearer token (from POST /login); the handler gets the `Session`.
    USER = "user"
    #: The operator's `server.admin_token`.
    ADMIN = "admin"
    #: A user's bearer token, or a signed link's query parameters instead (media
    #: downloads, for <img> and curl): the handler checks whichever was given.
    USER_OR_LINK = "user_or_link"


@dataclass(frozen=True, slots=True)
class Media:
    """A response body that is not a model: its media type and schema."""

    media_type: str
    schema: Mapping[str, Any]


#: What a success status carries: a model (JSON), other media, or nothing.
Content = type[Model] | Media | None


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    #: In OpenAPI syntax: /groups/{conversation_id}.
    path: str
    summary: str
    handler: Handler
    access: Access
    #: Success statuses and what each carries.
    success: Mapping[int, Content]
    body: type[Model] | None
    query: type[Model] | None
    #: Error statuses the operation may answer (always `models.ErrorReply`).
    errors: frozenset[int]
    description: str = ""
    #: A body that is not JSON (an upload): the media types it may have, read by the
    #: handler itself as a stream (web/streamed_body.py).
    raw_body: tuple[str, ...] = ()
    parameters: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", tuple(_PARAMETER.findall(self.path)))

    @property
    def streams_body(self) -> bool:
        return bool(self.raw_body)

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


_PARAMETER = re.compile(r"\{([a-z_]+)\}")


class Api:
    """The operations of one app, declared by the route modules and installed at once."""

    def __init__(self, accounts: Users, *, limits: Limits, admin_token: str) -> None:
        self.accounts = accounts
        self.limits = limits
        self.admin_token = admin_token
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, *, summary: str, description: str = "",
              access: Access = Access.USER, response: Content = None, status: int = 200,
              also: Mapping[int, Content] | None = None, body: type[Model] | None = None,
              query: type[Model] | None = None, raw_body: tuple[str, ...] = (),
              errors: tuple[int, ...] = ()) -> Callable[[Handler], Handler]:
        """Declare an operation; `status` is its usual success, `also` any other success
        statuses (201 for "created" beside 200)."""

        def declare(handler: Handler) -> Handler:
            operation = Operation(
                method, path, summary, handler, access, {status: response, **(also or {})},
                body, query, frozenset(errors), description, raw_body)
            for name in operation.parameters:
                if name not in models.PATH_PARAMETERS:
                    raise ValueError(f"{operation.label}: no kind for path parameter {name}")
            self.operations.append(operation)
            return handler

        return declare

    def error_statuses(self, operation: Operation) -> list[int]:
        """Every error status the operation may answer: the ones its inputs and access
        imply, and the ones it declares."""
        implied = set(operation.errors)
        if operation.body or operation.raw_body or operation.query or operation.parameters:
            implied.add(400)  # a malformed body, field, parameter or query
        if operation.access is not Access.PUBLIC:
            implied.add(401)
        if operation.parameters:
            implied.add(404)  # the id names nothing (you can see)
        if operation.body or operation.raw_body:
            implied |= {408, 413}  # the body was too slow or too large
        if operation.access in (Access.USER, Access.USER_OR_LINK) or operation.body \
                or operation.raw_body:
            implied.add(503)  # storage, an owner shard or the server going down
        return sorted(implied)

    def install(self, app: QuartTrio) -> None:
        """Register every declared operation with quart."""
        app.url_map.converters["default"] = _segment_converter(self._fixed_beside_parameters())
        for operation in self.operations:
            rule = _PARAMETER.sub(r"<\1>", operation.path)
            app.add_url_rule(rule, operation.handler.__name__, self._view(operation),
                             methods=[operation.method])

    def _fixed_beside_parameters(self) -> set[str]:
        """Fixed path segments at a place where another route has a parameter, such as
        `direct` in /conversations/direct beside /conversations/{conversation_id}."""
        split = [operation.path.split("/") for operation in self.operations]
        fixed = set()
        for parts in split:
            for other in split:
                for index, (part, there) in enumerate(zip(parts, other, strict=False)):
                    if parts[:index] != other[:index]:
                        break
                    if not part.startswith("{") and there.startswith("{"):
                        fixed.add(part)
        return fixed

    def _view(self, operation: Operation) -> Callable[..., Awaitable[ResponseReturnValue]]:
        limits, accounts, admin_token = self.limits, self.accounts, self.admin_token

        async def view(**path: str) -> ResponseReturnValue:
            arguments: dict[str, Any] = {}
            if operation.access is Access.USER:
                arguments["session"] = await authenticate(request, accounts)
            elif operation.access is Access.ADMIN:
                require_admin(request, admin_token)
            data = await json_object(request) if operation.body else None
            for name, raw in path.items():
                arguments[name] = models.PATH_PARAMETERS[name].parse_text(raw, name, limits)
            if operation.body and data is not None:
                arguments["body"] = operation.body.parse(data, limits)
            if operation.query:
                arguments["query"] = operation.query.parse_query(request.args, limits)
            return _respond(operation, await operation.handler(**arguments))

        view.__name__ = operation.handler.__name__
        return view


def configured_limits(config: Config) -> Limits:
    """The bounds of the models that come from this server's configuration."""
    return Limits(min_password_length=config.auth.min_password_length,
                  history_page_max=config.limits.history_page_max,
                  max_link_ttl=int(config.media.max_link_ttl))


def _respond(operation: Operation, reply: Reply) -> ResponseReturnValue:
    """The reply as quart takes it, once it is one the operation declares: an answer the
    document does not describe is a bug, so it fails here (500, logged) and in the tests,
    rather than reaching clients."""
    if isinstance(reply, Response):
        _check(operation, reply.status_code, Media)
        return reply
    if isinstance(reply, NoContent):
        _check(operation, reply.value, None)
        return "", reply.value
    model, status = reply if isinstance(reply, tuple) else (reply, 200)
    _check(operation, status, type(model))
    return model.to_json(), status


def _check(operation: Operation, status: int, content: type[Model] | type[Media] | None) -> None:
    if status not in operation.success:
        raise AssertionError(f"{operation.label} answered {status}, which it does not declare")
    declared = operation.success[status]
    matches = (declared is None if content is None else
               isinstance(declared, Media) if content is Media else declared is content)
    if not matches:
        raise AssertionError(f"{operation.label} answered {status} with {content}, "
                             f"declared {declared}")


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, decoded under the edge rules (`protocol/edge.py`:
    bounded nesting, text that is valid Unicode). The Content-Type is not insisted on, so
    that `curl -d '{...}'` works as typed."""
    data = await request.get_data(as_text=False)
    if not data:
        raise BadRequest("the request needs a JSON object body", code="malformed_json")
    try:
        value = edge.loads_json(data)
    except edge.InputError as exc:
        raise BadRequest(exc.message, code=exc.code) from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return value


def _segment_converter(fixed: set[str]) -> type[BaseConverter]:
    """The converter of every path parameter: one segment, but not a fixed segment that a
    sibling route has at that place. Without it GET /conversations/direct would be GET
    /conversations/{conversation_id} with a bad id (400) instead of a method the path
    does not take (405 with `Allow: POST`), and OPTIONS would list GET for it."""
    words = "|".join(sorted(re.escape(word) for word in fixed))

    class Segment(BaseConverter):
        regex = f"(?!(?:{words})$)[^/]+" if words else "[^/]+"
        part_isolating = True

    return Segment

