"""Route: POST /reports (a user reports a message or a member of a conversation)."""

from __future__ import annotations

from quart import request

from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.services.reports import ReportInput
from chatd.web import models
from chatd.web.api import Api
from chatd.web.client_address import client_address
from chatd.web.render import Reply


def register(api: Api, services: Services) -> None:
    reports = services.reports

    @api.route(
        "POST", "/reports", summary="Report a message or a member of a conversation you are in",
        description=(
            "Name a message (`seq`: its sender is reported) or a member (`user_id`), or "
            "both (then `user_id` must be the sender). `evidence` is plaintext your client "
            "supplies (the server cannot read encrypted chats); it is kept as given. The "
            "report goes to the server's moderators and counts toward the reported "
            "account's abuse score (docs/privacy.md). 201 with a new report; the same "
            "report again (same message, or same member without one) is 200 with the "
            "first report's id."),
        body=models.FileReport, status=201, response=models.ReportFiled,
        also={200: models.ReportFiled}, errors=(404, 429))
    async def file_report(session: Session, body: models.FileReport) -> Reply:
        report, created = await reports.report(session, ReportInput(
            body.conversation_id, body.seq, body.user_id, body.reason, body.note or "",
            body.evidence or ""), address=client_address(request, services.proxies))
        return models.ReportFiled(report.report_id), 201 if created else 200
