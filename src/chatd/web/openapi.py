"""The REST API as OpenAPI 3.1, served at /openapi.json.

Nothing here is written by hand per route: the paths come from the route declarations
(web/api.py), the schemas from the models that parse requests and render responses
(web/models.py), and the limits from the running server's configuration.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from chatd.web import models
from chatd.web.api import Access, Api, Media, Operation
from chatd.web.schema import ListOf, Model, Nested, Schema

#: What each error status means here; the codes are in docs/api.md.
_ERRORS = {
    400: "the request is malformed or breaks a rule (malformed_json, missing_field, "
         "invalid_field, bad_request, or a rule of the operation such as seq_out_of_range)",
    401: "no token, or one that is revoked, expired or not the one needed",
    403: "not allowed: only a group's admins may do that (not_an_admin), the media is "
         "not yours to send or delete (media_forbidden, not_uploader), or a signed link "
         "is invalid or expired (invalid_link)",
    404: "no such user, device, conversation or message that you can see",
    408: "the request body did not arrive in time",
    409: "it conflicts with what exists (handle_taken, too_many_devices, group_full, "
         "direct_id_clash) or with what is under way (backup_running)",
    411: "an upload without a Content-Length (length_required)",
    413: "the request or the message body is too large (media: media_too_large)",
    415: "the upload's declared Content-Type contradicts its content",
    416: "the range asks for no byte of the media (Content-Range: bytes */size)",
    451: "the operator made this content unavailable (quarantined)",
    507: "the upload would take you past your media quota (quota_exceeded)",
    429: "a rate limit (docs/privacy.md) refused it; retry after Retry-After seconds",
    503: "the server cannot serve it now (storage_failure, owner_unreachable, "
         "shutting_down, backup_failed); retry",
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"required": True, "description": "seconds",
                          "schema": {"type": "integer", "minimum": 1}}},
}


def _ref(model: type[Model]) -> Schema:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _raw_body_schema(media_type: str) -> Schema:
    if media_type == "multipart/form-data":
        return {"type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}}}
    return {"type": "string", "format": "binary"}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(api: Api, operation: Operation) -> dict[str, Any]:
    result: dict[str, Any] = {"operationId": operation.handler.__name__,
                              "summary": operation.summary}
    if operation.description:
        result["description"] = operation.description
    if operation.access is Access.PUBLIC:
        result["security"] = []
    elif operation.access is Access.ADMIN:
        result["security"] = [{"admin": []}]
    elif operation.access is Access.USER_OR_LINK:
        # The token, or nothing in headers: a signed link's u, e and sig in the query.
        result["security"] = [{"bearer": []}, {}]
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": models.PATH_PARAMETERS[name].schema(api.limits)}
                  for name in operation.parameters]
    if operation.query:
        parameters += operation.query.parameters(api.limits)
    if parameters:
        result["parameters"] = parameters
    if operation.body:
        result["requestBody"] = {"required": True, "content": _json(_ref(operation.body))}
    elif operation.raw_body:
        result["requestBody"] = {"required": True, "content": {
            media_type: {"schema": _raw_body_schema(media_type)}
            for media_type in operation.raw_body}}
    responses: dict[str, Any] = {}
    for status, content in sorted(operation.success.items()):
        answer: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if isinstance(content, Media):
            answer["content"] = {content.media_type: {"schema": dict(content.schema)}}
        elif content is not None:
            answer["content"] = _json(_ref(content))
        responses[str(status)] = answer
    for status in api.error_statuses(operation):
        error: dict[str, Any] = {"description": _ERRORS[status],
                                 "content": _json(_ref(models.ErrorReply))}
        if status in _ERROR_HEADERS:
            error["headers"] = _ERROR_HEADERS[status]
        responses[str(status)] = error
    result["responses"] = responses
    return result


def _models(api: Api) -> dict[str, type[Model]]:
    """Every model the operations use, by name, with the models inside them."""
    found: dict[str, type[Model]] = {}
    stack: list[type[Model]] = [models.ErrorReply]
    for operation in api.operations:
        stack += [model for model in (operation.body, *operation.success.values())
                  if isinstance(model, type) and issubclass(model, Model)]
    while stack:
        model = stack.pop()
        known = found.setdefault(model.__name__, model)
        if known is not model:
            raise ValueError(f"two models are called {model.__name__}")
        stack += [field.kind.model for field in model.fields()
                  if isinstance(field.kind, Nested | ListOf)
                  and found.get(field.kind.model.__name__) is not field.kind.model]
    return found


def openapi_document(api: Api, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for operation in api.operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            api, operation)
    schemas: dict[str, Any] = {"Id": models.ID.definition()}
    for name, model in sorted(_models(api).items()):
        schemas[name] = model.schema(api.limits)
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatd", "version": version,
                 "description": "REST API of chatd (docs/api.md). Errors are "
                                "{\"error\": {\"code\", \"message\"}}. Formats named "
                                "chatd.* are the name rules of docs/api.md."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "a token from POST /login"},
                "admin": {"type": "http", "scheme": "bearer",
                          "description": "the server's server.admin_token"},
            },
        },
        "security": [{"bearer": []}],
    }
