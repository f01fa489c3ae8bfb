"""Admin routes of moderation: reports, the abuse queue, limiting accounts.

Declared only when `server.admin_token` is set, like every operator route. Any shard
answers for the whole cluster: lists ask every shard and merge; a change goes to the
shard that holds the record (a report's id and a user's id name it).
"""

from __future__ import annotations

from chatd.domain.reports import Report
from chatd.services.abuse import AccountState
from chatd.services.context import Services
from chatd.web import models
from chatd.web.api import Access, Api
from chatd.web.render import Reply

#: A page when ?limit= is not given.
DEFAULT_PAGE = 50


def register(api: Api, services: Services) -> None:
    if not services.config.server.admin_token:
        return  # operator routes are off: not served, nor described
    reports = services.reports

    @api.route("GET", "/admin/reports", summary="Reports, oldest first (admin token)",
               description="`status` open (default) or resolved; pages of `limit` (50) "
                           "after the report id `after`. Every shard is asked; one that "
                           "does not answer is named under `unreachable`.",
               access=Access.ADMIN, query=models.ReportsQuery, response=models.Reports)
    async def list_reports(query: models.ReportsQuery) -> Reply:
        limit = query.limit or DEFAULT_PAGE
        listing = await reports.list_reports(query.status, query.after or 0, limit)
        return models.Reports(
            [report_model(report) for report in listing.items], listing.unreachable,
            listing.items[-1].report_id if listing.more and listing.items else None)

    @api.route("POST", "/admin/reports/{report_id}/resolve",
               summary="Resolve a report (admin token)",
               description="`dismiss`: unfounded, it stops counting toward the reported "
                           "account's score; `uphold`: founded, nothing more; `limit`: "
                           "founded, and the account is limited; `unlimit`: the account's "
                           "limit is lifted and its counters start afresh. 409 "
                           "already_resolved for a report resolved before.",
               access=Access.ADMIN, body=models.ResolveReport, response=models.Report,
               errors=(409, 503))
    async def resolve_report(report_id: int, body: models.ResolveReport) -> Reply:
        return report_model(await reports.resolve(report_id, body.action, body.note or ""))

    @api.route("GET", "/admin/abuse",
               summary="The abuse queue: accounts limited or scoring for review (admin "
                       "token)",
               description="By user id, pages of `limit` (50) after `after`; each with its "
                           "score now, the terms that make it, and its counters.",
               access=Access.ADMIN, query=models.PageQuery, response=models.AbuseQueue)
    async def abuse_queue(query: models.PageQuery) -> Reply:
        listing = await reports.queue(query.after or 0, query.limit or DEFAULT_PAGE)
        return models.AbuseQueue(
            [account_model(state) for state in listing.items], listing.unreachable,
            listing.items[-1].user_id if listing.more and listing.items else None)

    @api.route("POST", "/admin/users/{user_id}/limit",
               summary="Limit an account to replying only (admin token)",
               access=Access.ADMIN, body=models.AdminNote, response=models.AbuseAccount,
               errors=(503,))
    async def limit_account(user_id: int, body: models.AdminNote) -> Reply:
        return account_model(await reports.limit(user_id, body.note or "", limited=True))

    @api.route("POST", "/admin/users/{user_id}/unlimit",
               summary="Lift an account's limit; its counters start afresh (admin token)",
               access=Access.ADMIN, body=models.AdminNote, response=models.AbuseAccount,
               errors=(503,))
    async def unlimit_account(user_id: int, body: models.AdminNote) -> Reply:
        return account_model(await reports.limit(user_id, body.note or "", limited=False))


def report_model(report: Report) -> models.Report:
    return models.Report(
        report.report_id, report.reported_id, report.reporter_id, report.conversation_id,
        report.seq, report.reason, report.note, report.evidence, report.created_at,
        report.content_type, report.message_text, report.status, report.resolved_at,
        report.action, report.resolution_note, report.message_id or None)


def account_model(state: AccountState) -> models.AbuseAccount:
    record = state.record
    return models.AbuseAccount(
        state.user_id, state.handle, state.score.points, list(state.score.reasons),
        record.limited, record.limited_at, record.limited_by, record.limit_reason,
        state.requests_in_window, record.accepted, record.declined, record.blocked,
        len(record.reporters), record.cleared_at, record.note)
