"""The operator's account routes: list, show, deactivate, reactivate, erase, export.

Declared only when `server.admin_token` is set, like /admin/backup. They act across
shards as the user routes do (services/gdpr.py): a user's home holds their account, every
shard their conversations and uploads. `chatd admin users ...` is their client, and runs
the same service calls offline against a stopped shard (admin_cli.py).
"""

from __future__ import annotations

from chatd.domain.models import User
from chatd.services.account_admin import AccountState
from chatd.services.context import Services
from chatd.services.gdpr import AccountView
from chatd.web import models
from chatd.web.api import Access, Api
from chatd.web.render import Reply
from chatd.web.routes_gdpr import ZIP, export_reply

#: Users a listing page holds unless ?limit= says otherwise.
DEFAULT_LIST = 100


def admin_user(user: User, state: AccountState) -> models.AdminUser:
    return models.AdminUser(user.user_id, user.handle, user.display_name, user.status_text,
                            user.created_at, state.status, state.deactivated_at,
                            state.erasing_since, state.erased_at)


def register(api: Api, services: Services) -> None:
    if not services.config.server.admin_token:
        return  # operator routes are off: not served, nor described
    gdpr = services.gdpr
    admin = services.account_admin

    @api.route("GET", "/admin/users", summary="The users homed on this shard (paged)",
               access=Access.ADMIN, query=models.AdminUsersQuery, response=models.AdminUsers,
               description="In id order; `handle` keeps those whose handle starts with it. "
                           "Each shard lists the users registered through it (their "
                           "home): ask every shard for all of them.")
    async def list_users(query: models.AdminUsersQuery) -> Reply:
        found, next_after = admin.list_users(after=query.after or 0,
                                             handle_prefix=query.handle or "",
                                             limit=query.limit or DEFAULT_LIST)
        return models.AdminUsers([admin_user(user, state) for user, state in found],
                                 next_after or None)

    @api.route("GET", "/admin/users/{user_id}", summary="One account: profile, state, "
               "devices, counts", access=Access.ADMIN, response=models.AdminUserDetail,
               errors=(503,))
    async def show_user(user_id: int) -> Reply:
        return detail(await gdpr.show(user_id))

    @api.route("POST", "/admin/users/{user_id}/deactivate", summary="Revoke every token "
               "and refuse logins (403 account_deactivated) until reactivated",
               access=Access.ADMIN, response=models.AdminUserDetail, errors=(503,))
    async def deactivate_user(user_id: int) -> Reply:
        await gdpr.deactivate(user_id)
        return detail(await gdpr.show(user_id))

    @api.route("POST", "/admin/users/{user_id}/reactivate", summary="Allow logins again",
               access=Access.ADMIN, response=models.AdminUserDetail, errors=(503,))
    async def reactivate_user(user_id: int) -> Reply:
        await gdpr.reactivate(user_id)
        return detail(await gdpr.show(user_id))

    @api.route("POST", "/admin/users/{user_id}/erase", summary="Erase an account and its "
               "data, as DELETE /me does (no password)", access=Access.ADMIN,
               response=models.EraseResult, also={202: models.EraseResult}, errors=(503,))
    async def erase_user(user_id: int) -> Reply:
        status = await gdpr.erase(user_id, None)
        return models.EraseResult(status), 200 if status == "erased" else 202

    @api.route("POST", "/admin/users/{user_id}/export", summary="Export an account's data, "
               "as POST /me/export does", access=Access.ADMIN, status=202,
               response=models.ExportStatus, errors=(409, 503))
    async def export_user(user_id: int) -> Reply:
        record = await gdpr.start_export(user_id)
        return models.ExportStatus(record.export_id, "pending"), 202

    @api.route("GET", "/admin/exports/{export_id}", summary="An export made on this shard: "
               "202 while it is being made, then the zip", access=Access.ADMIN,
               response=ZIP, also={202: models.ExportStatus})
    async def get_admin_export(export_id: str) -> Reply:
        return await export_reply(services, gdpr.exports.get(export_id, None))


def detail(view: AccountView) -> models.AdminUserDetail:
    return models.AdminUserDetail(
        admin_user(view.user, view.state),
        [models.AdminDevice(device.device_id, device.name, device.created_at)
         for device in view.devices],
        view.conversations, view.uploads, view.upload_bytes, view.unreachable)
