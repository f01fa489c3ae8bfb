"""Schemathesis over the live server's /openapi.json: the server keeps its published
contract (every check), and no request gets a 5xx.

One shard runs in each test's Trio run; Schemathesis (in a worker thread, with plain
`requests`) generates requests from the document the server publishes, from a fixed seed
and from a random seed that is printed (`CHATD_FUZZ_SEED=<n>` replays it).

The contract test runs Schemathesis's engine, as `schemathesis run --checks all` does: the
coverage, fuzzing and stateful phases, with every check (status codes, content types,
response schemas and headers, positive data accepted, negative data rejected, missing
auth, undeclared methods and `Allow`, use after free, resource availability, ignored auth,
response time). Two things are set up for it, each for a reason given where it is done:
strategies for the `chatd.*` name formats, and a `filter_failure` hook that accepts the
400s of state-dependent rules (`STATE_DEPENDENT`). Requests carry a user's token; the
operations that revoke the token they are called with get one of a second user's.

The robustness test goes where the contract test does not (which runs everything as
generated, "plain"), in two variants of each operation:

- real: path parameters are real ids (a group the user administers, a direct chat with
  messages, the peer) and some body fields get values that pass the first checks, so the
  requests reach the services instead of stopping at 404/400;
- hostile (operations with a JSON body): the real variant's body, with what JSON allows
  and Schemathesis never generates: lone surrogates ("\\ud800"), NUL, deep nesting,
  numbers beyond 64 bits, NaN.

Requests are authenticated as a registered user (the token goes in as `auth`, so it
survives negative cases that rewrite headers); `/logout` and deleting a device get a
throwaway login each. It checks `not_a_server_error` (the contract test checks the rest;
the hostile bodies are not in the schema's terms), plus, as the contract test does: the
server logs no traceback and nothing at ERROR, and every request is answered within 10 s.

A third test sends a request body after the server has already answered (a 401 decided
from the headers alone): the connection must go on serving.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import emoji
import httpx
import hypothesis
import requests
import requests.auth
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import AcceptedNegativeData, FailureGroup
from schemathesis.engine import events, from_schema
from schemathesis.openapi.checks import RejectedPositiveData

from chatd.domain import rules
from chatd.domain.reactions import MAX_EMOJI_LENGTH, check_emoji
from chatd.errors import BadRequest
from chatd.server import RunningServer
from chatd.web import models
from chatd.web.schema import compile_pattern
from tests.helpers import PASSWORD, ErrorLog, error_log, fresh_handle, new_account
from tests.media_files import png

FIXED_SEED = 7_2026
#: Examples per operation, per generation mode, per variant, per seed.
EXAMPLES = int(os.environ.get("CHATD_FUZZ_REST_EXAMPLES", "12"))
#: Seconds the fuzzing may take; past that it stops and the test fails. It takes about 100 s
#: alone and twice that beside the contract run on the other worker of a 2-core box.
TOTAL_TIMEOUT = 300.0
REQUEST_TIMEOUT = 10.0
#: Operations that revoke the token they are called with.
REVOKING = {("POST", "/logout"), ("DELETE", "/devices/{device_id}")}
#: The contract test: examples per operation and phase, per seed, and its time budget.
#: 25 keeps each seed near two minutes beside the rest of the suite; deeper runs set
#: CHATD_FUZZ_CONTRACT_EXAMPLES (40 took about three).
CONTRACT_EXAMPLES = int(os.environ.get("CHATD_FUZZ_CONTRACT_EXAMPLES", "25"))
CONTRACT_TIMEOUT = 240.0
#: Codes of 400s that a schema-valid request may get because of the state it meets, which
#: no request schema can state: the conversation is direct, not a group (not_a_group);
#: the seq is past its head (seq_out_of_range); the user named is not a member
#: (not_a_member) or is the caller (use_leave, when removing; cannot_report_yourself), or
#: did not send the message reported (not_the_sender); blocking yourself
#: (cannot_block_self); the message forwarded was forwarded many times already
#: (forward_limited). docs/api.md lists them.
#: Schemathesis's positive_data_acceptance expects any valid request to succeed unless
#: it is 401/403/404/409/429; these 400s, and only these, are accepted as well.
STATE_DEPENDENT = frozenset({"not_a_group", "seq_out_of_range", "not_a_member", "use_leave",
                             "not_an_image", "cannot_report_yourself", "not_the_sender",
                             "cannot_block_self", "forward_limited",
                             # Push subscriptions: where a URL's host resolves, and
                             # whether 65 bytes are a point on P-256, are past a schema.
                             "endpoint_refused", "invalid_push_key",
                             # Keys: a signature checks against the device's ed25519 key,
                             # the one-time key cap against what the device holds.
                             "bad_signature", "too_many_keys"})

NASTY_STRINGS = ("\ud800", "\udfff", "a\ud800b", "\udc00\ud800", "\x00", "\u202e\ufeff",
                 "x" * 70_000, "")
#: Raw JSON numbers that no 64-bit field can hold, and what Python's json also reads.
NASTY_NUMBERS = ("18446744073709551616", "-1180591620717411303424", "1e400", "-1e400",
                 "NaN", "Infinity", "9" * 4301, "0.5", "-0")
DEEP = "\x00deep\x00"
NUMBER = "\x00number\x00"


class BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


@dataclass(frozen=True)
class Hostile:
    """Edits to a generated JSON object body; `raw` is what is sent instead."""

    string: str | None
    depth: int | None
    deep_kind: str
    number: str | None
    pick: int

    def apply(self, body: Any) -> bytes | None:
        if not isinstance(body, dict):
            return None
        body = dict(body)
        keys = sorted(body) or ["x"]
        if self.string is not None:
            strings = [key for key in keys if isinstance(body.get(key), str)] or keys
            body[strings[self.pick % len(strings)]] = self.string
        if self.number is not None:
            numbers = [key for key in keys if isinstance(body.get(key), int)] or ["seq"]
            body[numbers[self.pick % len(numbers)]] = NUMBER
        if self.depth is not None:
            body[keys[(self.pick // 7) % len(keys)] if self.pick % 3 else "extra"] = DEEP
        text = json.dumps(body)  # ensure_ascii: a lone surrogate goes out as "\ud800"
        if self.depth is not None:
            nested = ("[" * self.depth + "]" * self.depth if self.deep_kind == "array"
                      else '{"a":' * self.depth + "0" + "}" * self.depth)
            text = text.replace(json.dumps(DEEP), nested)
        if self.number is not None:
            text = text.replace(json.dumps(NUMBER), self.number)
        return text.encode()


hostile_edits = st.builds(
    Hostile, st.one_of(st.none(), st.sampled_from(NASTY_STRINGS)),
    st.one_of(st.none(), st.sampled_from((50, 999, 1000, 1500, 5000, 50_000))),
    st.sampled_from(("array", "map")), st.one_of(st.none(), st.sampled_from(NASTY_NUMBERS)),
    st.integers(0, 1000))


@dataclass
class Failure:
    problem: str
    request: str
    response: str
    logged: list[str]
    count: int = 1
    operations: set[str] = field(default_factory=set)


def body_overrides(real: dict[str, str]) -> dict[str, Callable[[int], Any]]:
    """Body fields a service checks first, with values that pass those checks."""
    return {
        "conversation_id": lambda n: (real["conversation_id"], real["direct"])[n % 2],
        "user_id": lambda n: real["user_id"],
        "user_ids": lambda n: [real["user_id"]],
        "members": lambda n: [real["user_id"]],
        "client_msg_id": lambda n: f"fuzz-{n}",
        "content_type": lambda n: ("text/plain", "application/octet-stream")[n % 2],
        "seq": lambda n: n % 4,
    }


def override_body(case: schemathesis.Case, values: dict[str, Any]) -> schemathesis.Case:
    if isinstance(case.body, dict):
        for key, value in values.items():
            if key in case.body:
                case.body[key] = value
    return case


@dataclass
class Fuzzer:
    """Runs in a worker thread: plain `requests` against the server in the Trio thread."""

    url: str
    handle: str
    token: str
    real: dict[str, str]  # path parameter (or "path:parameter") → a real id
    log: ErrorLog
    stop: threading.Event
    session: requests.Session = field(default_factory=requests.Session)
    failures: dict[str, Failure] = field(default_factory=dict)
    calls: int = 0
    unsendable: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    per_operation: dict[str, dict[int, int]] = field(default_factory=dict)
    unsatisfiable: list[str] = field(default_factory=list)

    def login(self, device: str = "fuzz") -> dict[str, Any]:
        response = self.session.post(f"{self.url}/login", json={
            "handle": self.handle, "password": PASSWORD, "device_name": device},
            timeout=REQUEST_TIMEOUT)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def ensure_token(self) -> None:
        me = self.session.get(f"{self.url}/me", timeout=REQUEST_TIMEOUT,
                              headers={"Authorization": f"Bearer {self.token}"})
        if me.status_code == 401:
            self.token = self.login()["token"]

    def run_case(self, case: schemathesis.Case, revoking: bool, raw: bytes | None) -> None:
        if self.stop.is_set():
            return
        token = self.token
        if revoking:
            throwaway = self.login("throwaway")
            token = throwaway["token"]
            if case.path_parameters and case.path_parameters.get("device_id") == "own":
                case.path_parameters["device_id"] = throwaway["device_id"]
        try:
            self.call(case, token, raw)
        finally:
            if revoking:  # log the throwaway out if the call did not: devices are capped
                self.session.post(f"{self.url}/logout", auth=BearerAuth(token),
                                  timeout=REQUEST_TIMEOUT)

    def call(self, case: schemathesis.Case, token: str, raw: bytes | None) -> None:
        extra: dict[str, Any] = {} if raw is None else {"data": raw}
        seen = len(self.log.records)
        try:
            # The token as `auth`, not a header: negative cases that rewrite headers drop
            # headers passed in, and a missing token only tests the 401 path again.
            response = case.call(base_url=self.url, session=self.session,
                                 timeout=REQUEST_TIMEOUT, auth=BearerAuth(token), **extra)
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            self.record(f"{case.operation.label}: no response ({exc!r})", case, raw, None,
                        self.log.records[seen:])
            return
        except (requests.RequestException, ValueError):
            self.unsendable += 1  # a request `requests` refuses to send (a bad header)
            return
        self.calls += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        per = self.per_operation.setdefault(case.operation.label, {})
        per[response.status_code] = per.get(response.status_code, 0) + 1
        logged = self.log.records[seen:]
        problem = None
        if response.status_code == 501 and _unknown_transfer_coding(case):
            return  # RFC 9112 section 6.1's answer, from h11 (see the contract test)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except FailureGroup as group:
            problem = f"{response.status_code} from {case.operation.label}: " + \
                "; ".join(failure.title for failure in group.exceptions)
        if problem is None and logged:
            problem = f"{case.operation.label} ({response.status_code}): the server logged an error"
        if problem is not None:
            self.record(problem, case, raw, response, logged)

    def record(self, problem: str, case: schemathesis.Case, raw: bytes | None,
               response: Any, logged: list[str]) -> None:
        tail = next((line for text in logged for line in reversed(text.splitlines())
                     if line.strip()), "")
        tail = re.sub(r"'[^'\s]*'|\d+", "…", tail)[:160]  # one key for one kind of error
        status = "-" if response is None else response.status_code
        key = f"{status} {tail}" if tail else f"{status} {case.operation.label}"
        if raw is None:
            request = case.as_curl_command(headers={"Authorization": "Bearer $TOKEN"})
        else:
            shown = raw.decode() if len(raw) <= 400 else \
                f"{raw[:300].decode(errors='replace')}…({len(raw)} bytes)"
            request = (f"curl -X {case.method.upper()} -H 'Authorization: Bearer $TOKEN' "
                       f"-H 'Content-Type: application/json' --data-binary '{shown}' "
                       f"{self.url}{case.formatted_path}")
        text = "" if response is None else response.text[:500]
        known = self.failures.get(key)
        if known is None:
            known = self.failures[key] = Failure(problem, request, text, logged)
        else:
            known.count += 1
            if len(request) < len(known.request):
                known.problem, known.request, known.response = problem, request, text
                known.logged = logged or known.logged
        known.operations.add(case.operation.label)

    def fuzz(self, operation: Any, mode: GenerationMode, run_seed: int, variant: str) -> None:
        """Run one operation's examples in one variant (plain, real or hostile)."""
        method, path = operation.method.upper(), operation.path
        revoking = (method, path) in REVOKING
        path_parameters = None
        if variant != "plain" and operation.path_parameters:
            path_parameters = {
                p.name: self.real.get(f"{path}:{p.name}", self.real[p.name])
                for p in operation.path_parameters}
        cases = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
        if variant != "plain":
            overrides = body_overrides(self.real)
            cases = st.tuples(cases, st.sets(st.sampled_from(sorted(overrides))),
                              st.integers(0, 1_000_000)).map(
                lambda drawn: override_body(drawn[0], {
                    key: overrides[key](drawn[2]) for key in drawn[1]}))
        edits = hostile_edits if variant == "hostile" else st.none()

        @seed(run_seed)
        @settings(max_examples=EXAMPLES, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=cases, edit=edits)
        def check(case: schemathesis.Case, edit: Hostile | None) -> None:
            self.run_case(case, revoking, None if edit is None else edit.apply(case.body))

        try:
            check()
        except hypothesis.errors.Unsatisfiable:
            # Nothing to generate (no negative form of an operation without inputs).
            self.unsatisfiable.append(f"{operation.label} {mode.value}")
        self.ensure_token()


def run_schemathesis(spec: dict[str, Any], fuzzer: Fuzzer, seeds: list[int]) -> list[str]:
    schema = schemathesis.openapi.from_dict(spec)
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        variants = []  # "plain" runs in the contract test, with every check
        if operation.path_parameters or operation.body:
            variants.append("real")
        if operation.body:
            variants.append("hostile")
        for run_seed in seeds:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for variant in variants:
                    if fuzzer.stop.is_set():
                        return labels
                    fuzzer.fuzz(operation, mode, run_seed, variant)
    return labels


async def test_no_request_gets_a_server_error(server: RunningServer) -> None:
    random_seed = choose_seed()
    print(f"\nrest fuzz: fixed seed {FIXED_SEED}, random seed {random_seed} "
          f"(replay with CHATD_FUZZ_SEED={random_seed}); hypothesis {hypothesis.__version__}, "
          f"schemathesis {schemathesis.__version__}")
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        spec = (await http.get("/openapi.json")).json()
        user, peer = await new_account(http, fresh_handle("rest")), await new_account(http)
        direct = await user.direct_with(peer)
        group = await user.group("fuzzed", peer)
        leaving = await user.group("to leave", peer)
        for n in range(3):
            assert (await user.send(direct, f"m{n}")).status_code == 201
            assert (await user.send(group, f"g{n}")).status_code == 201
        uploaded = await http.post("/media/upload", content=png(), headers={
            **user.headers, "Content-Type": "image/png"})
        assert uploaded.status_code == 201
        # A public address as a literal: nothing is resolved, and nothing is pushed to it
        # (the user is the only one whose token the fuzzer holds, and writes to others).
        subscribed = await user.post("/push/subscriptions", {
            "kind": "http", "url": "https://93.184.216.34/notify", "pushkey": "fuzz",
            "app_id": "fuzz"})
        assert subscribed.status_code == 201, subscribed.text
        real = {"subscription_id": subscribed.json()["subscription_id"],
                "conversation_id": group, "direct": direct, "user_id": peer.user_id,
                "seq": "2", "device_id": "own", "media_id": uploaded.json()["media_id"],
                "emoji": "👍", "export_id": "000" + "0" * 32,
                "/messages/{conversation_id}/{seq}/status:conversation_id": direct,
                "/messages/{conversation_id}:conversation_id": direct,
                "/conversations/{conversation_id}/read:conversation_id": direct,
                "/groups/{conversation_id}/leave:conversation_id": leaving}
        stop = threading.Event()
        async with error_log() as logged:
            fuzzer = Fuzzer(server.url, user.handle, user.token, real, logged, stop)
            labels: list[str] = []
            done = threading.Event()

            def fuzz() -> list[str]:
                try:
                    return run_schemathesis(spec, fuzzer, [FIXED_SEED, random_seed])
                finally:
                    done.set()

            try:
                with trio.move_on_after(TOTAL_TIMEOUT) as budget:
                    labels = await trio.to_thread.run_sync(fuzz, abandon_on_cancel=True)
            finally:
                stop.set()
                await settle(done)
        health = await http.get("/healthz")
    elapsed = time.monotonic() - started
    print(f"rest fuzz: {fuzzer.calls} requests over {len(labels)} operations in "
          f"{elapsed:.1f} s; statuses {dict(sorted(fuzzer.statuses.items()))}; "
          f"{fuzzer.unsendable} unsendable; nothing to generate for {fuzzer.unsatisfiable}")
    for label, statuses in fuzzer.per_operation.items():
        print(f"  {label}: {dict(sorted(statuses.items()))}")
    report = []
    for key, failure in fuzzer.failures.items():
        report.append(f"--- {failure.count} request(s) to {sorted(failure.operations)}: "
                      f"{key}\n{failure.problem}\n  shortest request: {failure.request}\n"
                      f"  response: {failure.response}")
        report.extend(f"  server log:\n{text[-3000:]}" for text in failure.logged[:1])
    print("\n".join(report))
    assert health.status_code == 200
    assert not budget.cancelled_caught, f"not done after {TOTAL_TIMEOUT:g} s"
    assert not fuzzer.failures, f"{len(fuzzer.failures)} distinct failure(s):\n" + \
        "\n".join(report)
    assert fuzzer.calls > 0


async def settle(done: threading.Event) -> None:
    """Wait (shielded) for an abandoned fuzzing thread to see `stop` and end: left running
    into the next test, its Hypothesis compiled code while that test's server compiled its
    routes, and CPython 3.11's AST builder keeps one recursion count for all threads
    (python/cpython#106905): "AST constructor recursion depth mismatch" at startup."""
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(done.wait, REQUEST_TIMEOUT * 3)


def choose_seed() -> int:
    return int(os.environ.get("CHATD_FUZZ_SEED") or random.randrange(2**32))


# -- the contract: every check ---------------------------------------------------------------

#: The name formats of the document (models.py): what JSON Schema cannot say about a name
#: (trimmed and NFC-normalised before its length counts; a zero-width joiner only inside
#: an emoji) is named by its format. A generator that does not know the format draws from
#: the pattern alone, which admits, rarely, a name the server refuses (73 characters that
#: trim to 60 are fine, 65 that do not are not), so each gets a strategy of names the
#: server's rules accept: with spaces to trim, emoji joined by ZWJs, accents to compose.
NAME_FORMATS = {
    str(kind.format): (kind, max_length, blank)
    for kind, max_length, blank in ((models.DISPLAY_NAME, rules.MAX_DISPLAY_NAME, False),
                                    (models.GROUP_NAME, rules.MAX_GROUP_NAME, False),
                                    (models.STATUS, rules.MAX_STATUS_TEXT, True),
                                    (models.DEVICE_NAME, rules.MAX_DEVICE_NAME, False))
}
_NAME_CHARACTERS = st.characters(codec="utf-8",
                                 exclude_categories=["Cc", "Cf", "Cs", "Zl", "Zp"])
_NAME_PIECES = st.sampled_from(["\U0001f468\u200d\U0001f469\u200d\U0001f467",
                                "\U0001f3f3\ufe0f\u200d\U0001f308", "e\u0301", "\u1100\u1161"])
_PADDING = st.sampled_from(["", " ", "  ", "\t", "\u3000", "\n"])


#: Emoji the server takes (`chatd.emoji`): a sample of Unicode's list as the library has it.
EMOJI_STRATEGY = st.sampled_from(sorted(
    text for text in emoji.EMOJI_DATA if len(text) <= MAX_EMOJI_LENGTH))


def name_strategy(name_format: str) -> st.SearchStrategy[str]:
    kind, max_length, blank = NAME_FORMATS[name_format]
    pattern = compile_pattern(kind.pattern or "")

    def accepted(text: str) -> bool:
        try:
            rules.clean_text(text, "name", max_length=max_length, allow_empty=blank)
        except BadRequest:
            return False
        return bool(pattern.search(text))

    core = st.lists(st.one_of(_NAME_CHARACTERS, _NAME_PIECES), min_size=0 if blank else 1,
                    max_size=max_length).map("".join)
    names = st.tuples(_PADDING, core, _PADDING).map("".join).filter(accepted)
    return st.one_of(st.just(""), names) if pattern.search("") else names


#: Which name format each body field has (models.py), by field name.
_FIELD_FORMATS = {"display_name": models.DISPLAY_NAME, "name": models.GROUP_NAME,
                  "status": models.STATUS, "device_name": models.DEVICE_NAME}
_FORMAT_VIOLATION = re.compile(r"violates `format` at /properties/(\w+)")


def _unknown_transfer_coding(case: schemathesis.Case) -> bool:
    codings = [value for name, value in (case.headers or {}).items()
               if name.lower() == "transfer-encoding"]
    return any(value.strip().lower() != "chunked" for value in codings)


def _valid_name_after_all(failure: Any, case: schemathesis.Case) -> bool:
    """A custom format has no checker Schemathesis knows: for negative data it draws
    strings it *assumes* break the format, and now and then one is a valid name (a
    random seed found "°ûæ"). Such a request is not schema-violating; the server's own
    rule (domain/rules.py, which the format names) decides."""
    found = _FORMAT_VIOLATION.search(str(failure.message))
    body = case.body if isinstance(case.body, dict) else {}
    if found is not None and found.group(1) == "emoji":
        # (The same for an emoji: `chatd.emoji` is the emoji library's data.)
        value = body.get("emoji")
        try:
            return isinstance(value, str) and bool(check_emoji(value))
        except BadRequest:
            return False
    if found is None or found.group(1) not in _FIELD_FORMATS:
        return False
    value = body.get(found.group(1))
    kind = _FIELD_FORMATS[found.group(1)]
    _, max_length, blank = NAME_FORMATS[str(kind.format)]
    if not isinstance(value, str):
        return False
    try:
        rules.clean_text(value, "name", max_length=max_length, allow_empty=blank)
    except BadRequest:
        return False
    return True


def formats_in(value: object) -> set[str]:
    if isinstance(value, dict):
        found = {value["format"]} if isinstance(value.get("format"), str) else set()
        return found.union(*(formats_in(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(formats_in(item) for item in value))
    return set()


@dataclass
class Contract:
    """What one engine run saw; filled in the worker thread."""

    cases: int = 0
    checks: int = 0
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    #: How many times each check ran.
    ran: dict[str, int] = field(default_factory=dict)
    stop_reason: str = "not started"

    def fail(self, key: str, text: str) -> None:
        self.failures.setdefault(key, text)

    def note(self, event: events.ScenarioFinished | events.FuzzScenarioFinished) -> None:
        recorder = event.recorder
        self.cases += len(recorder.cases)
        per = self.statuses.setdefault(recorder.label, {})
        for interaction in recorder.interactions.values():
            if interaction.response is not None:
                status = interaction.response.status_code
                per[status] = per.get(status, 0) + 1
        for nodes in recorder.checks.values():
            self.checks += len(nodes)
            for node in nodes:
                self.ran[node.name] = self.ran.get(node.name, 0) + 1
                if node.failure_info is not None:
                    failure = node.failure_info.failure
                    self.fail(f"{recorder.label}: {node.name}: {failure.title}",
                              f"{failure.message}\n  reproduce:\n"
                              f"{node.failure_info.code_sample}")


def run_contract(schema: Any, contract: Contract, stop: threading.Event) -> None:
    """The engine's run (all phases, all checks), in a worker thread."""
    stream = from_schema(schema).execute()
    for event in stream:
        if stop.is_set():
            stream.stop()
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            contract.note(event)
        elif isinstance(event, events.NonFatalError):
            contract.fail(f"{event.label}: error", f"{event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            contract.fail("fatal error", repr(event.exception))
        elif isinstance(event, events.EngineFinished):
            contract.stop_reason = event.stop_reason.value
            for failure in event.failures:
                contract.fail(f"after the run: {failure.title}", failure.message)


def contract_schema(spec: dict[str, Any], url: str, run_seed: int, *, token: str,
                    throwaway: Callable[[], str], contract: Contract) -> Any:
    config = schemathesis.Config.from_dict({
        "seed": run_seed, "base-url": url, "workers": 1, "continue-on-failure": True,
        "request-timeout": REQUEST_TIMEOUT,
        "generation": {"max-examples": CONTRACT_EXAMPLES},
        "checks": {"max_response_time": REQUEST_TIMEOUT},
    })
    schema = schemathesis.openapi.from_dict(spec, config=config)

    @schema.auth()
    class Tokens:
        """The user's token; for an operation that revokes the token it is called with,
        a fresh login of a second user (so that a device id taken from GET /devices
        cannot log the fuzzing user out either)."""

        def get(self, case: schemathesis.Case, context: Any) -> str:
            return token

        def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
            if (case.method.upper(), case.path) in REVOKING:
                data = throwaway()
            headers = dict(case.headers or {})
            headers["Authorization"] = f"Bearer {data}"
            case.headers = headers  # type: ignore[assignment]

    @schema.hook
    def filter_failure(context: Any, failure: Any, case: schemathesis.Case,
                       response: schemathesis.Response) -> bool:
        """Accept the state-dependent 400s (`STATE_DEPENDENT`) for schema-valid requests,
        and a name "violating" a `chatd.*` format that the server's rules accept."""
        if isinstance(failure, RejectedPositiveData) and response.status_code == 400:
            code = json.loads(response.content).get("error", {}).get("code")
            if code in STATE_DEPENDENT:
                contract.accepted[code] = contract.accepted.get(code, 0) + 1
                return False
        if isinstance(failure, AcceptedNegativeData) and _valid_name_after_all(failure, case):
            contract.accepted["name format"] = contract.accepted.get("name format", 0) + 1
            return False
        if response.status_code == 501 and _unknown_transfer_coding(case):
            # Generated headers can include a Transfer-Encoding no server implements: RFC
            # 9112 (section 6.1) answers it 501, which h11 does before the app sees it.
            contract.accepted["transfer coding"] = contract.accepted.get(
                "transfer coding", 0) + 1
            return False
        return True

    return schema


async def test_the_server_keeps_its_published_contract(server: RunningServer) -> None:
    """The fixed seed; tests/web/test_fuzz_rest_random.py runs a random one beside it (a
    file of its own, so the two run on different workers)."""
    await check_contract(server, FIXED_SEED)


async def check_contract(server: RunningServer, run_seed: int) -> None:
    """Schemathesis's engine with every check, from `run_seed`, within CONTRACT_TIMEOUT."""
    run_seeds = [run_seed]
    print(f"\ncontract: seed {run_seed} (replay with CHATD_FUZZ_SEED={run_seed}); "
          f"{CONTRACT_EXAMPLES} examples; schemathesis "
          f"{schemathesis.__version__}, hypothesis {hypothesis.__version__}")
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        spec = (await http.get("/openapi.json")).json()
        user, other = await new_account(http, fresh_handle("contract")), await new_account(http)
        await user.group("contract", other)
    # ("binary", an upload's body, is OpenAPI's own and Schemathesis knows it.)
    assert formats_in(spec) - {"binary"} == {*NAME_FORMATS, "chatd.emoji"}, \
        "a name format needs a strategy here"
    for name_format in NAME_FORMATS:
        schemathesis.openapi.format(name_format, name_strategy(name_format))
    schemathesis.openapi.format("chatd.emoji", EMOJI_STRATEGY)
    session = requests.Session()
    throwaway_tokens: list[str] = []

    def throwaway() -> str:
        """A fresh token of the second user; the last one is logged out first, since a
        user holds at most 16 devices (it may be revoked already: that is fine)."""
        for old in throwaway_tokens[-1:]:
            session.post(f"{server.url}/logout", auth=BearerAuth(old), timeout=REQUEST_TIMEOUT)
        response = session.post(f"{server.url}/login", timeout=REQUEST_TIMEOUT, json={
            "handle": other.handle, "password": PASSWORD, "device_name": "throwaway"})
        throwaway_tokens.append(response.json()["token"])
        return throwaway_tokens[-1]

    contracts = []
    async with error_log() as logged:
        for run_seed in run_seeds:
            contract = Contract()
            contracts.append(contract)
            schema = contract_schema(spec, server.url, run_seed, token=user.token,
                                     throwaway=throwaway, contract=contract)
            stop = threading.Event()
            with trio.move_on_after(max(0.0, CONTRACT_TIMEOUT - (time.monotonic() - started))):
                done = threading.Event()

                def run() -> None:
                    try:
                        run_contract(schema, contract, stop)  # noqa: B023 (called at once)
                    finally:
                        done.set()  # noqa: B023

                try:
                    await trio.to_thread.run_sync(run, abandon_on_cancel=True)
                finally:
                    stop.set()
                    await settle(done)
            for text in logged.records:
                contract.fail("the server logged an error", text[-3000:])
            logged.records.clear()
    elapsed = time.monotonic() - started
    report = []
    for run_seed, contract in zip(run_seeds, contracts, strict=True):
        print(f"contract, seed {run_seed}: {contract.cases} cases, {contract.checks} checks, "
              f"{len(contract.failures)} failures ({contract.stop_reason}); state-dependent "
              f"400s accepted: {contract.accepted}\n  checks run: {contract.ran}")
        for label, statuses in sorted(contract.statuses.items()):
            print(f"  {label}: {dict(sorted(statuses.items()))}")
        report += [f"--- seed {run_seed}, {key}\n{text}"
                   for key, text in contract.failures.items()]
    print(f"contract: {elapsed:.1f} s\n" + "\n".join(report))
    assert all(contract.stop_reason == "completed" for contract in contracts), \
        f"not done after {CONTRACT_TIMEOUT:g} s"
    assert not report, f"{len(report)} contract failure(s):\n" + "\n".join(report)
    assert all(contract.checks > 0 for contract in contracts)


async def _exchange(stream: trio.SocketStream, *parts: bytes) -> bytes:
    """Send `parts` (the last ones after a pause), return one whole response."""
    for n, part in enumerate(parts):
        if n:
            await trio.sleep(0.1)
        await stream.send_all(part)
    received = b""
    with trio.fail_after(REQUEST_TIMEOUT):
        while True:
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(body) >= length:
                    return received
            chunk = await stream.receive_some()
            assert chunk, f"the server hung up: {received!r}"
            received += chunk


async def test_a_body_sent_after_the_answer_does_not_stall_the_connection(
        server: RunningServer) -> None:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = b'{"user_id": "1"}'
    head = (b"POST /conversations/direct HTTP/1.1\r\nHost: chatd\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    async with stream:
        # No token: the server can answer 401 from the head alone, before the body comes.
        first = await _exchange(stream, head, body)
        assert first.startswith(b"HTTP/1.1 401 "), first
        second = await _exchange(stream, b"GET /healthz HTTP/1.1\r\nHost: chatd\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 200 "), second
