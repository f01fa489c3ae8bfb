"""What `chatd admin` prints for people: the admin routes' JSON answers as text.

Each function takes the answer's JSON form (the same from either door) and returns the
lines to print; `--json` prints the answer itself instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def when(ms: Any) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _next(answer: dict[str, Any]) -> list[str]:
    lines = []
    if answer.get("unreachable"):
        lines.append(f"(shards not asked, their items are missing: "
                     f"{', '.join(answer['unreachable'])})")
    if answer.get("next_after"):
        lines.append(f"(more: --after {answer['next_after']})")
    return lines


def users_list(answer: dict[str, Any]) -> str:
    users = answer.get("users", [])
    if not users:
        return "no users"
    lines = [f"{'user id':<20} {'handle':<24} {'status':<12} name"]
    lines += [f"{user['user_id']:<20} {user['handle'] or '-':<24} {user['status']:<12} "
              f"{user['display_name']}" for user in users]
    return "\n".join(lines + _next(answer))


def user_detail(answer: dict[str, Any]) -> str:
    user = answer["user"]
    lines = [f"user {user['user_id']}  @{user['handle'] or '-'}  "
             f"\"{user['display_name']}\"  {user['status']}",
             f"  created        {when(user['created_at'])}"]
    if user.get("status_text"):
        lines.append(f"  status text    {user['status_text']}")
    for field in ("deactivated_at", "erasing_since", "erased_at"):
        if user.get(field):
            lines.append(f"  {field.replace('_', ' '):<14} {when(user[field])}")
    devices = answer.get("devices", [])
    lines.append(f"  devices        {len(devices)}")
    lines += [f"    {device['device_id']}  \"{device['name']}\"  since "
              f"{when(device['created_at'])}" for device in devices]
    lines.append(f"  conversations  {answer['conversations']}")
    lines.append(f"  uploads        {answer['uploads']} ({answer['upload_bytes']:,} bytes)")
    if answer.get("unreachable"):
        lines.append(f"  (not counted: what shards {', '.join(answer['unreachable'])} hold; "
                     "they could not be asked)")
    return "\n".join(lines)


def erased(user_id: int, answer: dict[str, Any]) -> str:
    if answer["status"] == "erased":
        return f"user {user_id}: erased"
    left = answer.get("left")
    if not left:
        return (f"user {user_id}: erasing: the account is closed and its handle free; "
                "steps on shards that could not be reached now are finished in the "
                "background by the erase sweeper (watch `chatd admin users show`)")
    return "\n".join([
        f"user {user_id}: erasing (offline, only this shard's part of the erasure was done)",
        "  done:     the account is marked erasing; its profile is a tombstone, its "
        "handle free, every device and token revoked",
        f"  NOT done: {' and '.join(left['steps'])}, on shards {', '.join(left['shards'])} "
        "(this one included): they need every shard at once",
        f"  finished by {left['finished_by']}"])


def exported(user_id: int, answer: dict[str, Any]) -> str:
    return f"wrote the export of user {user_id} to {answer['file']} ({answer['bytes']:,} bytes)"


def reports(answer: dict[str, Any]) -> str:
    found = answer.get("reports", [])
    if not found:
        return "\n".join(["no reports", *_next(answer)])
    lines = []
    for report in found:
        where = f"conversation {report['conversation_id']}"
        if report.get("seq"):
            where += f" seq {report['seq']}"
        lines.append(f"report {report['report_id']}  {report['status']}  {report['reason']}  "
                     f"user {report['reported_id']} reported by {report['reporter_id']}  "
                     f"in {where}  {when(report['created_at'])}")
        for label, key in (("note", "note"), ("message", "message_text"),
                           ("evidence", "evidence")):
            if report.get(key):
                lines.append(f"    {label}: {_short(report[key])}")
        if report["status"] == "resolved":
            lines.append(f"    resolved {when(report['resolved_at'])}: {report['action']}"
                         + (f" ({report['resolution_note']})"
                            if report.get("resolution_note") else ""))
    return "\n".join(lines + _next(answer))


def resolved(answer: dict[str, Any]) -> str:
    note = f": {answer['resolution_note']}" if answer.get("resolution_note") else ""
    return (f"report {answer['report_id']}: resolved, {answer['action']} "
            f"(user {answer['reported_id']}){note}")


def abuse_queue(answer: dict[str, Any]) -> str:
    found = answer.get("accounts", [])
    if not found:
        return "\n".join(["the abuse queue is empty", *_next(answer)])
    lines = [f"{'user id':<20} {'handle':<24} {'score':>5}  {'limited':<14} reasons"]
    for account in found:
        limited = f"yes ({account['limited_by']})" if account["limited"] else "no"
        lines.append(f"{account['user_id']:<20} {account['handle'] or '-':<24} "
                     f"{account['score']:>5}  {limited:<14} {', '.join(account['reasons'])}")
    return "\n".join(lines + _next(answer))


def limit(answer: dict[str, Any]) -> str:
    who = f"user {answer['user_id']} (@{answer['handle'] or '-'})"
    if answer["limited"]:
        reason = f": {answer['limit_reason']}" if answer.get("limit_reason") else ""
        return f"{who}: limited by {answer['limited_by']} to replying only{reason}"
    return f"{who}: not limited (score {answer['score']})"


def quarantined(sha256: str, where: str) -> str:
    return (f"quarantined {sha256.lower()} on {where}: its downloads are refused (451), "
            "and so are new uploads of the same bytes")


def _short(text: str, length: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= length else text[:length - 1] + "…"


def ranges(status: dict[str, Any]) -> str:
    lines = [f"shard {status.get('shard')}: factor {status.get('factor')}, "
             f"settled {status.get('settled')}, lease {status.get('lease')}, "
             f"failovers {status.get('failovers')}, replica moves {status.get('replica_moves')}",
             f"{'range':<12}{'epoch':>6}  {'owner':<12}{'replica':<12}here"]
    for entry in status.get("ranges", []):
        here = ""
        if "acking" in entry:
            stream = entry.get("stream") or {}
            here = ("owner, acknowledging" if entry["acking"] else "owner, NOT acknowledging")
            if stream:
                here += f" (stream {stream.get('mode')}, lag {stream.get('lag_seconds', 0):.3f}s)"
        elif "following" in entry:
            here = "replica, following" if entry["following"] else "replica, waiting for a copy"
        lines.append(f"{entry['range']:<12}{entry['epoch']:>6}  {entry['owner']:<12}"
                     f"{entry['replica'] or '-':<12}{here}")
    return "\n".join(lines)
