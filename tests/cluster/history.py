"""What the clients of a fault-injection run did and saw, and the checks on it.

`History` is filled while the run goes on: each send a client means to make (`Intent`,
one per client_msg_id, retried until acknowledged), every answer it got (`Answer`),
every message it saw in a history read or a live frame, and at the end a read of
every conversation through every shard, plus the ranges each shard reports. `check`
is pure: it takes the history and returns every `Violation` of the rules the cluster
promises, so the checks can be fed hand-made bad histories (tests/cluster/test_history.py).

The rules (docs/architecture.md, "The failure model" and "The write path"):

- `lost` / `duplicated` / `misplaced`: every acknowledged send is in every final read
  exactly once, at the seq and with the message id it was acknowledged with; a send
  never acknowledged (indeterminate) is there at most once.
- `phantom`: every message with a client_msg_id is one a client sent, with its body.
- `gap`: a final read's seqs are 1, 2, ... n.
- `diverged`: every shard serves the same log of a conversation.
- `unread`: every conversation was read through every shard at the end.
- `conflict`: no seq of a conversation ever held two different messages in anything a
  client saw (an answer, a history read, a live frame), and `moved`: no message was
  seen at two seqs.
- `changed_answer`: every answer to one client_msg_id names the same seq and message.
- `refused`: a send that may not be refused (a member, a valid body) never was: 4xx
  answers other than 429 are a bug.
- `owners_disagree`: every shard names the same acting owner and epoch per range.
- `live_order` / `live_gap`: a live socket gets each conversation's messages in seq
  order, each once, and misses none between the first and the last it got (up to the
  head, for a socket still open at the end: it catches up by itself after a fault),
  except the ones its own user sent (a device does not get what it sent; all of a
  user's clients here share one device) (docs/api.md, "Delivery").
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

#: Answers that mean "not done, maybe": retry with the same client_msg_id. Anything else
#: in 4xx is a refusal a valid send should never get.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
#: The codes of refusals (docs/api.md, the 4xx rows, and the WebSocket frame errors). A
#: WebSocket `error` frame carries no status, so its code decides: any other code
#: (`owner_unreachable`, `not_acknowledged`, one replication adds ...) is "retry".
REFUSAL_CODES = frozenset({
    "malformed_json", "nesting_too_deep", "invalid_text", "missing_field", "invalid_field",
    "bad_request", "seq_out_of_range", "not_a_group", "use_leave", "not_a_member",
    "unstorable_value", "missing_token", "invalid_token", "token_expired", "bad_credentials",
    "not_an_admin", "not_found", "unknown_user", "unknown_conversation", "unknown_device",
    "unknown_message", "method_not_allowed", "handle_taken", "group_full", "direct_id_clash",
    "too_many_devices", "payload_too_large", "body_too_large", "malformed_frame",
    "bad_frame", "unknown_type", "frame_too_large"})


def is_refusal(status: int | None, code: str) -> bool:
    """Whether an error answer to a send says it was not (and will not be) written:
    by its HTTP status, or by its code when it came without one (`status` None)."""
    if status is None:
        return code in REFUSAL_CODES
    return 400 <= status < 500 and status not in RETRYABLE_CLIENT_ERRORS


@dataclass(frozen=True)
class Intent:
    """One send a client means to make: retried under this client_msg_id until
    acknowledged or the run ends."""

    conversation_id: str
    client_msg_id: str
    sender_id: str
    body: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.conversation_id, self.sender_id, self.client_msg_id)


@dataclass(frozen=True)
class Answer:
    """An acknowledgement of one attempt of an intent."""

    seq: int
    message_id: str
    via: str


@dataclass(frozen=True)
class Seen:
    """One message as a client saw it, and where (`read a`, `live b`, `final c` ...)."""

    conversation_id: str
    seq: int
    message_id: str
    sender_id: str
    client_msg_id: str
    body: str
    source: str

    @classmethod
    def of(cls, message: Mapping[str, Any], source: str) -> Seen:
        """From a message object of the API (system bodies are maps: kept as JSON)."""
        body = message["body"]
        return cls(str(message["conversation_id"]), int(message["seq"]),
                   str(message["message_id"]), str(message["sender_id"]),
                   str(message["client_msg_id"]),
                   body if isinstance(body, str) else json.dumps(body, sort_keys=True),
                   source)

    @property
    def fingerprint(self) -> tuple[str, str, str, str]:
        """What makes two sightings the same message."""
        return (self.message_id, self.sender_id, self.client_msg_id, self.body)


@dataclass
class LiveStream:
    """The message seqs one WebSocket got, per conversation, in arrival order.
    `ended`: the socket failed or was given up before the run's end; one still open
    then has had time to get everything, so it is checked up to each head."""

    source: str
    user_id: str
    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    ended: bool = False

    def received(self, message: Mapping[str, Any]) -> None:
        self.seqs[str(message["conversation_id"])].append(int(message["seq"]))


@dataclass(frozen=True)
class RangeReport:
    """One range as one shard reported it at the end (`GET /admin/ranges`)."""

    shard: str
    range: str
    owner: str
    epoch: int


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class History:
    """Everything recorded about a run (see the module docstring)."""

    intents: dict[tuple[str, str, str], Intent] = field(default_factory=dict)
    answers: dict[tuple[str, str, str], list[Answer]] = field(
        default_factory=lambda: defaultdict(list))
    refusals: dict[tuple[str, str, str], list[str]] = field(
        default_factory=lambda: defaultdict(list))
    attempts: int = 0
    unknown_outcomes: Counter[str] = field(default_factory=Counter)
    seen: list[Seen] = field(default_factory=list)
    streams: list[LiveStream] = field(default_factory=list)
    reads: int = 0
    live_frames: int = 0
    #: (conversation, shard) -> the whole log read through that shard at the end.
    final: dict[tuple[str, str], list[Seen]] = field(default_factory=dict)
    #: Every conversation the run wrote to (all are read at the end).
    conversations: set[str] = field(default_factory=set)
    shards: tuple[str, ...] = ()
    ranges: list[RangeReport] = field(default_factory=list)

    # -- recording ------------------------------------------------------------------------

    def intend(self, intent: Intent) -> None:
        assert intent.key not in self.intents, f"client_msg_id reused: {intent}"
        self.intents[intent.key] = intent
        self.conversations.add(intent.conversation_id)

    def attempted(self) -> None:
        self.attempts += 1

    def acknowledged(self, intent: Intent, answer: Answer) -> None:
        self.answers[intent.key].append(answer)

    def unknown(self, reason: str) -> None:
        """An attempt with no answer either way (503, timeout, connection lost)."""
        self.unknown_outcomes[reason] += 1

    def refused(self, intent: Intent, status: int, code: str) -> None:
        self.refusals[intent.key].append(f"{status} {code}")

    def saw(self, messages: Iterable[Mapping[str, Any]], source: str) -> None:
        self.seen.extend(Seen.of(message, source) for message in messages)

    def open_stream(self, source: str, user_id: str) -> LiveStream:
        """A new socket's stream, recorded as it fills."""
        stream = LiveStream(source, user_id)
        self.streams.append(stream)
        return stream

    def read_finally(self, conversation_id: str, shard: str,
                     messages: Iterable[Mapping[str, Any]]) -> None:
        self.final[(conversation_id, shard)] = [Seen.of(message, f"final {shard}")
                                                for message in messages]

    # -- summaries ------------------------------------------------------------------------

    @property
    def acknowledged_keys(self) -> set[tuple[str, str, str]]:
        return {key for key, answers in self.answers.items() if answers}

    def counts(self) -> dict[str, int]:
        acked = self.acknowledged_keys
        return {
            "sends": len(self.intents),
            "attempts": self.attempts,
            "acks": len(acked),
            "indeterminate": len(self.intents.keys() - acked),
            "retried_acks": sum(max(0, len(answers) - 1) for answers in self.answers.values()),
            "unknown_outcomes": sum(self.unknown_outcomes.values()),
            "history_reads": self.reads,
            "live_frames": self.live_frames,
            "messages_seen": len(self.seen),
        }


# -- the checks -------------------------------------------------------------------------------

def check(history: History) -> list[Violation]:
    """Every rule the history breaks (empty: none)."""
    return [*_answers_kept(history), *_refusals(history), *_one_message_per_seq(history),
            *_final_reads(history), *_live_streams(history), *_owners_agree(history)]


def _answers_kept(history: History) -> Iterable[Violation]:
    for key, answers in history.answers.items():
        distinct = {(answer.seq, answer.message_id) for answer in answers}
        if len(distinct) > 1:
            yield Violation("changed_answer", f"{_name(key)} was answered "
                            + ", ".join(f"seq {a.seq} id {a.message_id} via {a.via}"
                                        for a in answers))


def _refusals(history: History) -> Iterable[Violation]:
    for key, refusals in history.refusals.items():
        yield Violation("refused", f"{_name(key)} was refused: {', '.join(refusals)}")


def _one_message_per_seq(history: History) -> Iterable[Violation]:
    """Across answers, reads, live frames and final reads: one message per seq, one
    seq per message."""
    at_seq: dict[tuple[str, int], dict[tuple[str, str, str, str], str]] = defaultdict(dict)
    seqs_of: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)

    def note(conversation_id: str, seq: int, fingerprint: tuple[str, str, str, str],
             source: str) -> None:
        at_seq[(conversation_id, seq)].setdefault(fingerprint, source)
        seqs_of[(conversation_id, fingerprint[0])].setdefault(seq, source)

    for key, answers in history.answers.items():
        intent = history.intents[key]
        for answer in answers:
            note(intent.conversation_id, answer.seq, (answer.message_id, intent.sender_id,
                                                      intent.client_msg_id, intent.body),
                 f"answer via {answer.via}")
    for seen in [*history.seen, *(s for log in history.final.values() for s in log)]:
        note(seen.conversation_id, seen.seq, seen.fingerprint, seen.source)

    for (conversation_id, seq), fingerprints in sorted(at_seq.items()):
        if len(fingerprints) > 1:
            yield Violation("conflict", f"conversation {conversation_id} seq {seq} held "
                            + "; ".join(f"{_message(fp)} (seen in {source})"
                                        for fp, source in fingerprints.items()))
    for (conversation_id, message_id), seqs in sorted(seqs_of.items()):
        if len(seqs) > 1:
            yield Violation("moved", f"message {message_id} of conversation "
                            f"{conversation_id} was seen at seqs "
                            + ", ".join(f"{seq} ({source})" for seq, source in seqs.items()))


def _final_reads(history: History) -> Iterable[Violation]:
    acked = history.acknowledged_keys
    by_conversation: dict[str, list[Intent]] = defaultdict(list)
    for intent in history.intents.values():
        by_conversation[intent.conversation_id].append(intent)
    for conversation_id in sorted(history.conversations):
        logs: dict[str, list[Seen]] = {}
        for shard in history.shards:
            log = history.final.get((conversation_id, shard))
            if log is None:
                yield Violation("unread", f"conversation {conversation_id} was not read "
                                f"through shard {shard} at the end")
            else:
                logs[shard] = log
        for shard, log in logs.items():
            where = f"conversation {conversation_id} read through {shard}"
            seqs = [seen.seq for seen in log]
            if seqs != list(range(1, len(log) + 1)):
                yield Violation("gap", f"{where}: seqs {_ranges(seqs)} are not 1..{len(log)}")
            yield from _each_send_once(where, log, by_conversation[conversation_id],
                                       history, acked)
        distinct = {tuple(seen.fingerprint for seen in log) for log in logs.values()}
        if len(distinct) > 1:
            yield Violation("diverged", f"conversation {conversation_id}: the shards serve "
                            "different logs: " + "; ".join(
                                f"{shard}: {len(log)} messages" for shard, log in logs.items()))


def _each_send_once(where: str, log: Sequence[Seen], intents: Sequence[Intent],
                    history: History, acked: set[tuple[str, str, str]],
                    ) -> Iterable[Violation]:
    found: dict[tuple[str, str, str], list[Seen]] = defaultdict(list)
    for seen in log:
        if seen.client_msg_id:  # system entries have none
            found[(seen.conversation_id, seen.sender_id, seen.client_msg_id)].append(seen)
    for intent in intents:
        copies = found.get(intent.key, [])
        if len(copies) > 1:
            yield Violation("duplicated", f"{where}: {_name(intent.key)} is there "
                            f"{len(copies)} times, at seqs {[s.seq for s in copies]}")
        if intent.key not in acked:
            continue
        answer = history.answers[intent.key][0]
        if not copies:
            yield Violation("lost", f"{where}: {_name(intent.key)}, acknowledged as seq "
                            f"{answer.seq} (id {answer.message_id}), is missing")
        elif all((s.seq, s.message_id) != (answer.seq, answer.message_id) for s in copies):
            yield Violation("misplaced", f"{where}: {_name(intent.key)} was acknowledged "
                            f"as seq {answer.seq} id {answer.message_id}, found at "
                            + ", ".join(f"seq {s.seq} id {s.message_id}" for s in copies))
    for key, copies in found.items():
        sent = history.intents.get(key)
        if sent is None or any(s.body != sent.body for s in copies):
            yield Violation("phantom", f"{where}: seq {copies[0].seq} holds "
                            f"{_message(copies[0].fingerprint)}, which no client sent")


def _live_streams(history: History) -> Iterable[Violation]:
    for number, stream in enumerate(history.streams):
        where = f"socket {number} ({stream.source}, user {stream.user_id})"
        for conversation_id, seqs in sorted(stream.seqs.items()):
            if any(later <= earlier for earlier, later in pairwise(seqs)):
                yield Violation("live_order", f"{where} got conversation {conversation_id}'s "
                                f"seqs in the order {_ranges(seqs)}")
                continue
            log = next((history.final[(conversation_id, shard)] for shard in history.shards
                        if (conversation_id, shard) in history.final), None)
            if log is None or not seqs:
                continue  # unread: reported as such
            senders = {seen.seq: seen.sender_id for seen in log}
            got = set(seqs)
            last = seqs[-1] if stream.ended else max(seqs[-1], len(log))
            missed = [seq for seq in range(seqs[0], last + 1)
                      if seq not in got and senders.get(seq) != stream.user_id]
            if missed:
                yield Violation("live_gap", f"{where} never got seqs {_ranges(missed)} of "
                                f"conversation {conversation_id} (it got {_ranges(seqs)}"
                                f"{'' if stream.ended else ', and was open at the end'})")


def _owners_agree(history: History) -> Iterable[Violation]:
    views: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)
    for report in history.ranges:
        views[report.range][report.shard] = (report.owner, report.epoch)
    for range_name, by_shard in sorted(views.items()):
        if len(set(by_shard.values())) > 1 or set(by_shard) != set(history.shards):
            yield Violation("owners_disagree", f"range {range_name}: " + ", ".join(
                f"{shard} says owner {owner} epoch {epoch}"
                for shard, (owner, epoch) in sorted(by_shard.items()))
                + (f" (not reported by {sorted(set(history.shards) - set(by_shard))})"
                   if set(by_shard) != set(history.shards) else ""))


# -- wording ----------------------------------------------------------------------------------

def _name(key: tuple[str, str, str]) -> str:
    conversation_id, sender_id, client_msg_id = key
    return f"send {client_msg_id!r} of {sender_id} to {conversation_id}"


def _message(fingerprint: tuple[str, str, str, str]) -> str:
    message_id, sender_id, client_msg_id, body = fingerprint
    return f"message {message_id} from {sender_id} ({client_msg_id!r}: {body[:40]!r})"


def _ranges(seqs: Sequence[int]) -> str:
    """1,2,3,5,6 -> '1-3, 5-6' (short enough for a failure message)."""
    parts: list[str] = []
    start = previous = None
    for seq in seqs:
        if start is not None and previous is not None and seq == previous + 1:
            previous = seq
            continue
        if start is not None:
            parts.append(f"{start}-{previous}" if start != previous else f"{start}")
        start = previous = seq
    if start is not None:
        parts.append(f"{start}-{previous}" if start != previous else f"{start}")
    return ", ".join(parts)
