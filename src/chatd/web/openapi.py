"""The REST API as OpenAPI 3.1, served at /openapi.json.

Kept beside the routes by hand; tests/web/test_openapi.py checks that every route the app
serves is described here and nothing else is, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_ID: Schema = {"type": "string", "pattern": "^[0-9]{1,19}$", "description": "64-bit id"}
_MS: Schema = {"type": "integer", "description": "ms since the Unix epoch"}


def _object(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_SCHEMAS: dict[str, Schema] = {
    "Error": _object(["error"], error=_object(
        ["code", "message"], code={"type": "string"}, message={"type": "string"})),
    "User": _object(["user_id", "handle", "display_name", "status"], user_id=_ID,
                    handle={"type": "string"}, display_name={"type": "string"},
                    status={"type": "string"}, created_at=_MS,
                    hide_last_seen={"type": "boolean"}, read_receipts={"type": "boolean"}),
    "Device": _object(["device_id", "name", "created_at", "current"], device_id=_ID,
                      name={"type": "string"}, created_at=_MS, current={"type": "boolean"}),
    "Receipts": _object(["delivered_seq", "read_seq"], delivered_seq={"type": "integer"},
                        read_seq={"type": "integer"}),
    "Conversation": _object(
        ["conversation_id", "kind", "name", "last_seq", "unread", "members"],
        conversation_id=_ID, kind={"enum": ["direct", "group"]}, name={"type": "string"},
        created_by=_ID, created_at=_MS, last_seq={"type": "integer"}, last_activity=_MS,
        unread={"type": "integer"}, receipts=_ref("Receipts"),
        members={"type": "array", "items": _object(
            ["user_id", "role"], user_id=_ID, role={"enum": ["admin", "member"]})}),
    "Message": _object(
        ["message_id", "conversation_id", "seq", "sender_id", "content_type", "body", "ts"],
        message_id=_ID, conversation_id=_ID, seq={"type": "integer"}, sender_id=_ID,
        client_msg_id={"type": "string"}, content_type={"type": "string"},
        body={"description": "text for text/*, base64 for other types, an object for "
                             "chatd/system entries"},
        ts=_MS),
    "SendResult": _object(["message_id", "conversation_id", "seq", "ts"], message_id=_ID,
                          conversation_id=_ID, seq={"type": "integer"}, ts=_MS),
    "UserIds": _object(["user_ids"], user_ids={"type": "array", "items": _ID}),
}


def _op(summary: str, *, ok: int = 200, response: Schema | None = None,
        body: Schema | None = None, public: bool = False, errors: tuple[int, ...] = (),
        parameters: list[Schema] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(ok): {"description": "success"} if response is None else
        {"description": "success", "content": {"application/json": {"schema": response}}}}
    standard = (400,) if body is not None else ()
    for status in sorted({*standard, *errors, *(() if public else (401,))}):
        responses[str(status)] = {"description": "error",
                                  "content": {"application/json": {"schema": _ref("Error")}}}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if public:
        operation["security"] = []
    if body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": body}}}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path_param(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_CONV = [_path_param("conversation_id")]
_GROUP_ERRORS = (403, 404, 409)


def _paths() -> dict[str, Any]:
    conversation = _ref("Conversation")
    return {
        "/healthz": {"get": _op("Liveness and readiness", public=True)},
        "/openapi.json": {"get": _op("This document", public=True)},
        "/metrics": {"get": _op("Prometheus counters (needs server.admin_token)",
                                errors=(404,))},
        "/register": {"post": _op(
            "Create an account", ok=201, public=True, response=_ref("User"),
            errors=(409, 429), body=_object(
                ["handle", "password", "display_name"],
                handle={"type": "string", "description": "E.164 phone or [a-z0-9_.]{3,32}"},
                password={"type": "string", "minLength": 8},
                display_name={"type": "string", "maxLength": 64}))},
        "/login": {"post": _op(
            "Log in; each login is a new device", public=True, errors=(401, 409, 429),
            body=_object(["handle", "password"], handle={"type": "string"},
                         password={"type": "string"}, device_name={"type": "string"}),
            response=_object(["token", "user_id", "device_id", "expires_at"],
                             token={"type": "string"}, user_id=_ID, device_id=_ID,
                             expires_at=_MS))},
        "/logout": {"post": _op("Revoke this token and its device", ok=204)},
        "/devices": {"get": _op("List your devices", response=_object(
            ["devices"], devices={"type": "array", "items": _ref("Device")}))},
        "/devices/{device_id}": {"delete": _op(
            "Revoke a device and its token", ok=204, errors=(400, 404),
            parameters=[_path_param("device_id")])},
        "/me": {
            "get": _op("Your profile", response=_ref("User")),
            "patch": _op("Change display name or status", response=_ref("User"),
                         body=_object([], display_name={"type": "string"},
                                      status={"type": "string", "maxLength": 140},
                                      hide_last_seen={"type": "boolean"},
                                      read_receipts={"type": "boolean"})),
        },
        "/users": {"get": _op(
            "Find a user by exact handle", response=_ref("User"), errors=(400, 404),
            parameters=[{"name": "handle", "in": "query", "required": True,
                         "schema": {"type": "string"}}])},
        "/users/{user_id}": {"get": _op("A public profile", response=_ref("User"),
                                        errors=(400, 404), parameters=[_path_param("user_id")])},
        "/conversations": {"get": _op("Your conversations, most recent first", response=_object(
            ["conversations"], conversations={"type": "array", "items": conversation}))},
        "/conversations/direct": {"post": _op(
            "Open (or get) the 1:1 conversation with a user; 201 when created",
            response=conversation, errors=(404,), body=_object(["user_id"], user_id=_ID))},
        "/conversations/{conversation_id}": {"get": _op(
            "One conversation", response=conversation, errors=(400, 404),
            parameters=_CONV)},
        "/conversations/{conversation_id}/read": {"post": _op(
            "Move your read watermark", response=_ref("Receipts"), errors=(404,),
            parameters=_CONV, body=_object(["seq"], seq={"type": "integer"}))},
        "/groups/create": {"post": _op(
            "Create a group; you are its admin", ok=201, response=conversation,
            errors=(404, 409), body=_object(["name", "members"], name={"type": "string"},
                                            members={"type": "array", "items": _ID}))},
        "/groups/{conversation_id}": {"patch": _op(
            "Rename a group (admins)", response=conversation, errors=_GROUP_ERRORS,
            parameters=_CONV, body=_object(["name"], name={"type": "string"}))},
        "/groups/{conversation_id}/add": {"post": _op(
            "Add members (admins)", response=conversation, errors=_GROUP_ERRORS,
            parameters=_CONV, body=_ref("UserIds"))},
        "/groups/{conversation_id}/remove": {"post": _op(
            "Remove members (admins)", response=conversation, errors=_GROUP_ERRORS,
            parameters=_CONV, body=_ref("UserIds"))},
        "/groups/{conversation_id}/admins": {"post": _op(
            "Promote members to admin (admins)", response=conversation, errors=_GROUP_ERRORS,
            parameters=_CONV, body=_ref("UserIds"))},
        "/groups/{conversation_id}/leave": {"post": _op(
            "Leave a group", ok=204, errors=(400, 404), parameters=_CONV)},
        "/messages/send": {"post": _op(
            "Append a message; answered once durable. Idempotent per client_msg_id.",
            ok=201, response=_ref("SendResult"), errors=(404, 413),
            body=_object(["conversation_id", "client_msg_id", "content_type", "body"],
                         conversation_id=_ID, client_msg_id={"type": "string", "maxLength": 64},
                         content_type={"type": "string"},
                         body={"type": "string",
                               "description": "text for text/*, base64 otherwise"}))},
        "/messages/{conversation_id}/{seq}/status": {"get": _op(
            "Delivered and read, per member, for one message (from the watermarks)",
            errors=(400, 404),
            parameters=[*_CONV, {"name": "seq", "in": "path", "required": True,
                                 "schema": {"type": "integer"}}],
            response=_object(["conversation_id", "seq", "members"], conversation_id=_ID,
                             seq={"type": "integer"}, members={"type": "array", "items": _object(
                                 ["user_id", "delivered", "read"], user_id=_ID,
                                 delivered={"type": "boolean"}, read={"type": "boolean"})}))},
        "/messages/{conversation_id}": {"get": _op(
            "A page of history in ascending seq order", errors=(400, 404),
            parameters=[*_CONV,
                        _query("after", {"type": "integer"}, "oldest page after this seq"),
                        _query("before", {"type": "integer"}, "newest page before this seq"),
                        _query("limit", {"type": "integer", "maximum": 200}, "default 50")],
            response=_object(["messages", "has_more"], has_more={"type": "boolean"},
                             messages={"type": "array", "items": _ref("Message")}))},
    }


def openapi_spec(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatd", "version": version,
                 "description": "REST API of chatd. Errors are {error: {code, message}}."},
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
