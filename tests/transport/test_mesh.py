"""The mesh over real sockets on 127.0.0.1: meshes in this test's Trio run, and fake peers
(the sans-I/O codec on a raw stream) that lie, go silent or send garbage."""

from __future__ import annotations

import dataclasses
import itertools
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import trio
import trustme

from chatd.errors import ChatdError, Conflict, NotFound, PayloadTooLarge, RateLimited
from chatd.protocol.mesh import (
    HandshakeRefused,
    MeshConnection,
    MeshProtocolError,
    Role,
    encode_frame,
)
from chatd.transport import (
    Mesh,
    MeshOptions,
    PeerAddress,
    PeerTimeout,
    PeerUnavailable,
    RemoteError,
)
from chatd.transport.link import handshake

SECRET = b"correct horse battery staple 32b"
RING = "ring-1"
HOST = "127.0.0.1"
#: Short timings so that failures show within a fraction of a second.
FAST = MeshOptions(request_timeout=2.0, heartbeat_interval=0.05, missed_heartbeats=4,
                   reconnect_min=0.01, reconnect_max=0.05, handshake_timeout=0.3)
#: A port nothing listens on (a mesh never dials a peer whose name sorts before its own,
#: so that peer's configured port is never used).
UNUSED_PORT = 9

_boots = itertools.count(1)


class Completed:
    """Shaped like chatd.storage.Pending: finished later, answered from its callback."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.result: Any = None
        self._callbacks: list[Callable[[Completed], None]] = []
        self.finished = False

    def add_done_callback(self, callback: Callable[[Completed], None]) -> None:
        if self.finished:
            callback(self)
        else:
            self._callbacks.append(callback)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.finished = result, error, True
        for callback in self._callbacks:
            callback(self)


class Recorder:
    """A MeshHandler whose methods are the behaviours under test."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.posts: list[tuple[str, str, Any]] = []
        self.pending: list[Completed] = []

    def handle_request(self, peer: str, method: str, body: Any) -> Any:
        self.requests.append((peer, method, body))
        if method == "echo":
            return {"peer": peer, "body": body}
        if method == "double":
            return body * 2
        if method == "later":
            return self._later(body)
        if method == "pending":
            pending = Completed()
            self.pending.append(pending)
            return pending
        if method == "done":  # a Completion finished before it is returned
            pending = Completed()
            pending.finish(result=body)
            return pending
        if method == "never":
            return trio.sleep_forever()  # noqa: ASYNC105  # the mesh awaits it
        if method == "raise":
            raise _error(body)
        if method == "raise_later":
            return self._raise_later(body)
        if method == "unencodable":
            return object()
        raise AssertionError(f"unexpected method {method}")

    def handle_post(self, peer: str, method: str, body: Any) -> None:
        self.posts.append((peer, method, body))
        if method == "crash":
            raise RuntimeError("a post handler bug")

    async def _later(self, body: Any) -> Any:
        await trio.sleep(0.01)
        return ["later", body]

    async def _raise_later(self, body: Any) -> Any:
        await trio.sleep(0.01)
        raise _error(body)


def _error(name: str) -> Exception:
    return {
        "not_found": NotFound("no such conversation"),
        "conflict": Conflict("already a member", code="already_member"),
        "rate_limited": RateLimited("slow down", retry_after=1.5),
        "teapot": RemoteError("short and stout", status=418, code="teapot"),
        "bug": RuntimeError("a handler bug"),
    }[name]


@dataclass
class Node:
    name: str
    mesh: Mesh
    handler: Recorder
    scope: trio.CancelScope
    port: int
    ups: list[tuple[str, str]] = field(default_factory=list)
    downs: list[str] = field(default_factory=list)

    def stop(self) -> None:
        self.scope.cancel()


async def start_node(nursery: trio.Nursery, name: str, peers: dict[str, int], *,
                     port: int = 0, ring: str = RING, secret: bytes = SECRET,
                     options: MeshOptions = FAST, **tls: ssl.SSLContext) -> Node:
    handler = Recorder()
    mesh = Mesh(shard=name, listen=(HOST, port),
                peers=[PeerAddress(peer, HOST, peer_port) for peer, peer_port in peers.items()],
                secret=secret, ring_signature=ring, boot_id=f"{name}-boot{next(_boots)}",
                handler=handler, options=options, **tls)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        with scope:
            await mesh.run(task_status=task_status)

    bound: int = await nursery.start(run)
    node = Node(name, mesh, handler, scope, bound)
    mesh.on_peer_up(lambda peer, boot: node.ups.append((peer, boot)))
    mesh.on_peer_down(node.downs.append)
    return node


async def start_cluster(nursery: trio.Nursery, names: str, **settings: Any) -> dict[str, Node]:
    """Shards named by the letters of `names`, all up. Started last name first: each
    dials only names after its own, whose ports are known by then."""
    nodes: dict[str, Node] = {}
    for name in sorted(names, reverse=True):
        peers = {peer: nodes[peer].port if peer in nodes else UNUSED_PORT
                 for peer in names if peer != name}
        nodes[name] = await start_node(nursery, name, peers, **settings)
    await wait_up(*nodes.values())
    return nodes


async def wait_up(*nodes: Node) -> None:
    await eventually(lambda: all(one.mesh.is_up(other.name)
                                 for one in nodes for other in nodes if other is not one))


async def eventually(check: Callable[[], object]) -> None:
    """Poll `check` (another task's progress) until it holds, for at most 3 s."""
    with trio.fail_after(3):
        while not check():  # noqa: ASYNC110  # polls what other tasks change
            await trio.sleep(0.005)


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    """What comes until the other side hangs up (a reset, when it closes with our data
    unread, counts too)."""
    received = bytearray()
    with trio.fail_after(3):
        try:
            while data := await stream.receive_some(65_536):
                received += data
        except trio.BrokenResourceError:
            pass
    return bytes(received)


def fake(role: Role, shard: str, **settings: Any) -> MeshConnection:
    """A peer's codec, to drive a handshake by hand; settings override the honest ones."""
    values: dict[str, Any] = dict(shard=shard, secret=SECRET, ring_signature=RING,
                                  boot_id=f"{shard}-fake", peers=["a", "b", "c"])
    values.update(settings)
    return MeshConnection(role, **values)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [message for message in caplog.messages if text in message]


# -- requests and posts ---------------------------------------------------------------------


async def test_requests_round_trip_between_two_and_three_meshes(nursery: trio.Nursery) -> None:
    pair = await start_cluster(nursery, "ab")
    assert await pair["a"].mesh.request("b", "echo", [1, "two", b"3"]) == {
        "peer": "a", "body": [1, "two", b"3"]}
    assert await pair["b"].mesh.request("a", "echo", None) == {"peer": "b", "body": None}
    trio_ = await start_cluster(nursery, "xyz")
    for one in trio_.values():
        for other in trio_.values():
            if other is not one:
                answer = await one.mesh.request(other.name, "echo", one.name + other.name)
                assert answer == {"peer": one.name, "body": one.name + other.name}
    assert sorted(trio_["y"].handler.requests) == [("x", "echo", "xy"), ("z", "echo", "zy")]
    assert {peer for peer, _ in trio_["x"].ups} == {"y", "z"}
    assert trio_["x"].mesh.boot_id_of("z") == dict(trio_["x"].ups)["z"]


async def test_the_three_forms_of_an_answer(nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"].mesh, nodes["b"]
    assert await a.request("b", "echo", 1) == {"peer": "a", "body": 1}  # a value
    assert await a.request("b", "later", 2) == ["later", 2]  # an awaitable
    assert await a.request("b", "done", 3) == 3  # a Completion already finished
    answers: dict[int, Any] = {}

    async def ask(body: int) -> None:
        try:
            answers[body] = await a.request("b", "pending", body)
        except ChatdError as error:
            answers[body] = error

    async with trio.open_nursery() as waiting:
        waiting.start_soon(ask, 4)
        waiting.start_soon(ask, 5)
        await eventually(lambda: len(b.handler.pending) == 2)
        await trio.sleep(0.02)
        assert answers == {}  # nothing until the Completion finishes
        by_body = {pending_body(b.handler, pending): pending for pending in b.handler.pending}
        by_body[5].finish(error=NotFound("gone"))
        by_body[4].finish(result={"seq": 7})
    assert answers[4] == {"seq": 7} and isinstance(answers[5], NotFound)


async def test_remote_errors_come_back_as_the_same_chatd_error(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    nodes = await start_cluster(nursery, "ab")
    a = nodes["a"].mesh
    for method in ("raise", "raise_later"):
        with pytest.raises(NotFound) as not_found:
            await a.request("b", method, "not_found")
        assert (not_found.value.status, not_found.value.code, not_found.value.message) == (
            404, "not_found", "no such conversation")
        with pytest.raises(Conflict) as conflict:
            await a.request("b", method, "conflict")
        assert conflict.value.code == "already_member"
        with pytest.raises(RateLimited) as limited:
            await a.request("b", method, "rate_limited")
        assert limited.value.retry_after == 1.5
        with pytest.raises(RemoteError) as teapot:  # a status we have no class for
            await a.request("b", method, "teapot")
        assert (teapot.value.status, teapot.value.code) == (418, "teapot")
        with pytest.raises(ChatdError) as bug:
            await a.request("b", method, "bug")
        assert (bug.value.status, bug.value.code) == (500, "internal")
        assert "a handler bug" not in bug.value.message  # internals stay on the peer
    with pytest.raises(ChatdError, match="cannot be encoded") as unencodable:
        await a.request("b", "unencodable", None)
    assert unencodable.value.status == 500
    assert len(logged(caplog, "mesh request raise from a failed")) == 1
    assert len(logged(caplog, "mesh request raise_later from a failed")) == 1
    assert await a.request("b", "echo", "still fine") == {"peer": "a", "body": "still fine"}
    assert nodes["a"].mesh.statistics()["b"].links == 1  # no error ended the link
    assert a.statistics()["b"].remote_errors == 11


async def test_pipelined_requests_and_posts_reach_the_handler_in_order(
        nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"].mesh, nodes["b"].handler
    sent: list[int] = []
    answers: dict[int, Any] = {}

    async def ask(n: int) -> None:
        sent.append(n)  # request() queues its frame before its first checkpoint
        answers[n] = await a.request("b", "pending" if n % 3 else "echo", n)

    async with trio.open_nursery() as pipeline:
        for n in range(1_000):
            pipeline.start_soon(ask, n)
        await eventually(lambda: len(b.requests) == 1_000)
        for pending in reversed(b.pending):
            pending.finish(result=pending_body(b, pending))  # answered out of order
    assert [body for _, _, body in b.requests] == sent
    assert all(answers[n] == (n if n % 3 else {"peer": "a", "body": n}) for n in range(1_000))
    for n in range(200):
        assert a.post("b", "seq", n)
    await eventually(lambda: len(b.posts) == 200)
    assert [body for _, _, body in b.posts] == list(range(200))


def pending_body(handler: Recorder, pending: Completed) -> Any:
    bodies = [body for _, method, body in handler.requests if method == "pending"]
    return bodies[handler.pending.index(pending)]


async def test_posts_both_ways_and_a_post_handler_error_is_contained(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"], nodes["b"]
    assert a.mesh.post("b", "crash", 0)
    assert a.mesh.post("b", "deliver", {"to": "u1"})
    assert b.mesh.post("a", "typing", [1, 2])
    await eventually(lambda: len(b.handler.posts) == 2 and len(a.handler.posts) == 1)
    assert b.handler.posts == [("a", "crash", 0), ("a", "deliver", {"to": "u1"})]
    assert a.handler.posts == [("b", "typing", [1, 2])]
    assert logged(caplog, "mesh post crash from a failed")
    stats = a.mesh.statistics()["b"]
    assert stats.posts_sent == 2 and b.mesh.statistics()["a"].posts_received == 2


async def test_a_full_queue_drops_posts_and_fails_requests_at_once(
        nursery: trio.Nursery) -> None:
    options = MeshOptions(**{**FAST.__dict__, "queue_frames": 5})
    nodes = await start_cluster(nursery, "ab", options=options)
    a = nodes["a"].mesh
    # No checkpoint between these: the writer cannot run, so the queue fills.
    accepted = [a.post("b", "p", n) for n in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    with pytest.raises(PeerUnavailable, match=r"5 frames \(\d+ bytes\) wait to be sent"):
        await a.request("b", "echo", 1)
    await eventually(lambda: len(nodes["b"].handler.posts) == 5)
    assert await a.request("b", "echo", 1) == {"peer": "a", "body": 1}
    assert a.statistics()["b"].posts_dropped == 3


async def test_a_request_over_the_frame_limit_fails_alone(nursery: trio.Nursery) -> None:
    options = MeshOptions(**{**FAST.__dict__, "max_frame_bytes": 10_000})
    nodes = await start_cluster(nursery, "ab", options=options)
    with pytest.raises(PayloadTooLarge):
        await nodes["a"].mesh.request("b", "echo", "x" * 10_000)
    assert not nodes["a"].mesh.post("b", "p", "x" * 10_000)
    with pytest.raises(ChatdError, match="too large"):  # the answer would be too large
        await nodes["a"].mesh.request("b", "double", "x" * 9_000)
    assert await nodes["a"].mesh.request("b", "echo", "x") == {"peer": "a", "body": "x"}


async def test_large_frames_go_out_in_pieces_and_arrive_whole(nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    big = bytes(range(256)) * 2_400  # 614 KB: written in several pieces
    answers: list[Any] = []

    async def ask(n: int) -> None:
        answers.append(await nodes["a"].mesh.request("b", "echo", [n, big]))

    async with trio.open_nursery() as both:
        for n in range(3):
            both.start_soon(ask, n)
    assert sorted(answer["body"][0] for answer in answers) == [0, 1, 2]
    assert all(answer["body"][1] == big for answer in answers)


class TaskSteps(trio.abc.Instrument):
    """Counts the steps of the tasks whose name ends with `suffix` (a link names its
    tasks "mesh link to PEER: WHAT")."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.steps += 1


async def test_plain_links_write_without_waking_the_writer(nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"].mesh, nodes["b"]
    writer = TaskSteps(": writer")
    trio.lowlevel.add_instrument(writer)
    try:
        for n in range(100):
            assert await a.request("b", "echo", n) == {"peer": "a", "body": n}
            a.post("b", "p", n)
        await eventually(lambda: len(b.handler.posts) == 100)
    finally:
        trio.lowlevel.remove_instrument(writer)
    # Every frame went out with the flusher, both ways (answers, posts and requests):
    # the writer tasks, parked since the link came up, never ran.
    assert writer.steps == 0
    assert [body for _, _, body in b.handler.posts] == list(range(100))


async def test_a_remainder_goes_to_the_writer_and_frames_keep_their_order(
        nursery: trio.Nursery) -> None:
    """More than the kernel takes at once: the flusher writes what it can, the writer the
    rest, and frames queued meanwhile (small ones, in later passes) wait behind it."""
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"].mesh, nodes["b"]
    big = bytes(range(256)) * 3_000  # 768 KB a frame; 24 MB in all
    sent = []
    for n in range(32):
        assert a.post("b", "p", [n, big])
        sent.append(n)
    for n in range(32, 232):
        await trio.lowlevel.checkpoint()  # each small one in a pass of its own
        assert a.post("b", "p", [n, b""])
        sent.append(n)
    await eventually(lambda: len(b.handler.posts) == len(sent))
    assert [body[0] for _, _, body in b.handler.posts] == sent
    assert all(body[1] == big for _, _, body in b.handler.posts[:32])
    assert a.statistics()["b"].frames_out >= len(sent)
    assert await a.request("b", "echo", "after") == {"peer": "a", "body": "after"}


async def test_answered_requests_do_not_wake_the_request_timer(
        nursery: trio.Nursery) -> None:
    """An answered request leaves its deadline in the timer's heap; the timer must not
    wake at each of them (once per request, a timeout after it) for nothing."""
    nodes = await start_cluster(nursery, "ab")
    a = nodes["a"].mesh
    timer = TaskSteps(": request timer")
    trio.lowlevel.add_instrument(timer)
    try:
        for n in range(50):
            await a.request("b", "echo", n, timeout=0.1)
            await trio.sleep(0.004)
        await trio.sleep(0.3)  # every deadline has passed
    finally:
        trio.lowlevel.remove_instrument(timer)
    assert timer.steps <= 12  # was one wake-up per request
    with pytest.raises(PeerTimeout):  # and it still fails one that gets no answer
        await a.request("b", "never", None, timeout=0.05)


# -- failures -----------------------------------------------------------------------------------


async def test_started_requests_keep_their_order_and_finish_by_callback(
        nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"].mesh, nodes["b"].handler
    calls = [a.start_request("b", "echo" if n % 2 else "pending", n) for n in range(500)]
    await eventually(lambda: len(b.requests) == 500)
    assert [body for _, _, body in b.requests] == list(range(500))  # queued when started
    for pending in b.pending:
        pending.finish(result=pending_body(b, pending))
    await eventually(lambda: all(call.finished for call in calls))
    assert [call.result for call in calls[:4]] == [
        0, {"peer": "a", "body": 1}, 2, {"peer": "a", "body": 3}]
    nodes["b"].stop()
    await eventually(lambda: not a.is_up("b"))
    refused = a.start_request("b", "echo", 1)
    assert refused.finished and isinstance(refused.error, PeerUnavailable)


async def test_a_down_peer_fails_requests_at_once(nursery: trio.Nursery) -> None:
    lonely = await start_node(nursery, "a", {"b": UNUSED_PORT})
    started = trio.current_time()
    with pytest.raises(PeerUnavailable) as failed:
        await lonely.mesh.request("b", "echo", 1, timeout=5)
    assert trio.current_time() - started < 0.05
    assert (failed.value.status, failed.value.code) == (503, "peer_unreachable")
    assert not lonely.mesh.post("b", "p", 1)
    assert not lonely.mesh.is_up("b") and lonely.mesh.boot_id_of("b") is None
    stats = lonely.mesh.statistics()["b"]
    assert stats.state == "connecting" and stats.requests_failed == 1
    assert stats.posts_dropped == 1
    with pytest.raises(ValueError, match="no peer 'q'"):
        await lonely.mesh.request("q", "echo", 1)


async def test_no_answer_by_the_deadline_is_a_timeout_and_a_late_answer_is_dropped(
        nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"].mesh, nodes["b"].handler
    started = trio.current_time()
    with pytest.raises(PeerTimeout) as timed_out:
        await a.request("b", "never", None, timeout=0.2)
    assert 0.2 <= trio.current_time() - started < 0.5
    assert (timed_out.value.status, timed_out.value.code) == (503, "peer_timeout")
    with pytest.raises(PeerTimeout):
        await a.request("b", "pending", None, timeout=0.05)
    b.pending[0].finish(result="too late")
    await eventually(lambda: a.statistics()["b"].late_responses == 1)
    assert await a.request("b", "echo", 1) == {"peer": "a", "body": 1}
    stats = a.statistics()["b"]
    assert stats.requests_timed_out == 2 and stats.requests_failed == 2


async def test_each_request_keeps_its_own_deadline(nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a = nodes["a"].mesh
    outcomes: dict[str, Any] = {}

    async def ask(name: str, seconds: float) -> None:
        started = trio.current_time()
        try:
            await a.request("b", "never", name, timeout=seconds)
        except PeerTimeout:
            outcomes[name] = trio.current_time() - started

    async with trio.open_nursery() as waiting:
        waiting.start_soon(ask, "long", 0.4)
        await trio.sleep(0.01)
        waiting.start_soon(ask, "short", 0.1)  # an earlier deadline than the one waited for
        with trio.move_on_after(0.05):  # a caller that gives up by itself
            await a.request("b", "pending", None, timeout=5)
    assert 0.1 <= outcomes["short"] < 0.2 and 0.4 <= outcomes["long"] < 0.5
    nodes["b"].handler.pending[0].finish(result="nobody waits")
    await eventually(lambda: a.statistics()["b"].late_responses == 1)
    # Thousands of answered requests later, deadlines still fire on time.
    for n in range(3_000):
        await a.request("b", "echo", n, timeout=10)
    started = trio.current_time()
    with pytest.raises(PeerTimeout):
        await a.request("b", "never", None, timeout=0.05)
    assert trio.current_time() - started < 0.15
    assert a.statistics()["b"].requests_timed_out == 3


async def test_a_dropped_link_fails_its_requests_in_flight_at_once(
        nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"], nodes["b"]
    failures: list[float] = []

    async def ask() -> None:
        with pytest.raises(PeerUnavailable, match="link closed"):
            await a.mesh.request("b", "never", None, timeout=5)
        failures.append(trio.current_time())

    async with trio.open_nursery() as waiting:
        for _ in range(3):
            waiting.start_soon(ask)
        await eventually(lambda: len(b.handler.requests) == 3)
        stopped = trio.current_time()
        b.stop()
    assert len(failures) == 3 and max(failures) - stopped < 0.1
    assert a.downs == ["b"] and not a.mesh.is_up("b")


async def test_a_restarted_peer_is_redialed_and_reports_its_new_boot_id(
        nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"], nodes["b"]
    first_boot = a.mesh.boot_id_of("b")
    b.stop()
    await eventually(lambda: not a.mesh.is_up("b"))
    assert a.downs == ["b"]
    again = await start_node(nursery, "b", {"a": UNUSED_PORT}, port=b.port)
    await wait_up(a, again)
    new_boot = a.mesh.boot_id_of("b")
    assert new_boot != first_boot and a.ups[-1] == ("b", new_boot)
    assert await a.mesh.request("b", "echo", "back") == {"peer": "a", "body": "back"}
    assert a.mesh.statistics()["b"].reconnects == 1


async def test_idle_connections_cannot_keep_a_real_peer_out(nursery: trio.Nursery) -> None:
    """Connections that never finish their handshake hold no slot a peer needs: when the
    table is full, the oldest is dropped for the newcomer."""
    slow = dataclasses.replace(FAST, handshake_timeout=30.0, max_handshakes=4)
    b = await start_node(nursery, "b", {"a": UNUSED_PORT}, options=slow)
    idle = [await trio.open_tcp_stream(HOST, b.port) for _ in range(12)]
    try:
        a = await start_node(nursery, "a", {"b": b.port}, options=slow)
        with trio.fail_after(5):
            await wait_up(a, b)
        assert await a.mesh.request("b", "echo", 1) == {"peer": "a", "body": 1}
    finally:
        for stream in idle:
            await stream.aclose()


async def test_a_peer_that_goes_silent_is_down_after_the_missed_heartbeats(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port = listeners[0].socket.getsockname()[1]
    a = await start_node(nursery, "a", {"b": port})
    async with listeners[0], await listeners[0].accept() as stream:
        established, _ = await handshake(stream, fake(Role.ACCEPTOR, "b"))
        assert established.peer == "a"
        await eventually(lambda: a.mesh.is_up("b"))
        up_at = trio.current_time()
        with pytest.raises(PeerUnavailable, match="silent for"):
            await a.mesh.request("b", "echo", 1, timeout=5)  # it is never read
        down_after = trio.current_time() - up_at
        limit = FAST.heartbeat_interval * FAST.missed_heartbeats
        assert limit - 0.02 <= down_after < limit + 3 * FAST.heartbeat_interval
        assert a.downs == ["b"]
        assert logged(caplog, "mesh link to b: nothing received for")


async def test_a_stopped_peer_that_comes_back_is_found_both_ways(
        nursery: trio.Nursery) -> None:
    """The listening side stops and restarts too: its peers redial it."""
    nodes = await start_cluster(nursery, "abc")
    nodes["c"].stop()
    await eventually(lambda: not nodes["a"].mesh.is_up("c") and not nodes["b"].mesh.is_up("c"))
    c = await start_node(nursery, "c", {"a": UNUSED_PORT, "b": UNUSED_PORT},
                         port=nodes["c"].port)
    await wait_up(nodes["a"], nodes["b"], c)
    assert {peer for peer, _ in c.ups} == {"a", "b"}
    assert await c.mesh.request("a", "echo", 1) == {"peer": "c", "body": 1}


# -- refusals -----------------------------------------------------------------------------------


async def test_a_ring_mismatch_is_refused_by_both_sides_naming_it(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    b = await start_node(nursery, "b", {"a": UNUSED_PORT}, ring="def")
    a = await start_node(nursery, "a", {"b": b.port}, ring="abc")
    await eventually(lambda: logged(caplog, "peer a: ring signature abc != ours def")
                     and logged(caplog, "peer b: ring signature def != ours abc"))
    await trio.sleep(0.1)  # several redials: logged once all the same
    assert len(logged(caplog, "peer b: ring signature def != ours abc")) == 1
    assert not a.mesh.is_up("b") and not b.mesh.is_up("a")
    assert a.mesh.statistics()["b"].connect_failures >= 2
    assert a.ups == b.ups == []


async def test_a_version_mismatch_is_refused_both_ways(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    b = await start_node(nursery, "b", {"a": UNUSED_PORT})
    # A newer "a" dials b: b refuses it, and it refuses b.
    async with await trio.open_tcp_stream(HOST, b.port) as stream:
        with pytest.raises(HandshakeRefused, match="peer b: protocol version 1 != ours 2"):
            await handshake(stream, fake(Role.DIALER, "a", peer="b", version=2))
    await eventually(lambda: logged(caplog, "peer a: protocol version 2 != ours 1"))
    # b dials a newer "c".
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    c = await start_node(nursery, "b", {"c": listeners[0].socket.getsockname()[1]})
    async with listeners[0], await listeners[0].accept() as stream:
        with pytest.raises(HandshakeRefused, match="peer b: protocol version 1 != ours 2"):
            await handshake(stream, fake(Role.ACCEPTOR, "c", version=2))
    await eventually(lambda: logged(caplog, "peer c: protocol version 2 != ours 1"))
    assert not b.mesh.is_up("a") and not c.mesh.is_up("c")


async def test_an_unknown_or_misplaced_name_is_refused(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    b = await start_node(nursery, "b", {"a": UNUSED_PORT, "c": UNUSED_PORT})
    for claimed, reason in (("x", "peer 'x': unknown shard (our peers: a, c)"),
                            ("c", "peer c: it dialed us, but b dials c")):
        async with await trio.open_tcp_stream(HOST, b.port) as stream:
            with pytest.raises(HandshakeRefused, match="refused the link"):
                await handshake(stream, fake(Role.DIALER, claimed, peer="b"))
        assert logged(caplog, reason)
    # A dialed peer that answers with another name.
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    a = await start_node(nursery, "a", {"b": listeners[0].socket.getsockname()[1]})
    async with listeners[0], await listeners[0].accept() as stream:
        with pytest.raises(HandshakeRefused, match="refused the link"):
            await handshake(stream, fake(Role.ACCEPTOR, "c"))
    await eventually(lambda: logged(caplog, "peer b: it says it is 'c'"))
    assert not a.mesh.is_up("b") and b.handler.requests == []


async def test_an_impostor_without_the_secret_reaches_nothing(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    lies = encode_frame({"kind": "REQ", "id": 1, "method": "echo", "body": 1,
                         "deadline_ms": 1000}) + encode_frame(
        {"kind": "POST", "method": "deliver", "body": 1})
    # It dials a real mesh, claiming to be "a", which the real mesh expects.
    b = await start_node(nursery, "b", {"a": UNUSED_PORT})
    async with await trio.open_tcp_stream(HOST, b.port) as stream:
        impostor = fake(Role.DIALER, "a", peer="b", secret=b"a guess at the cluster secret!")
        with pytest.raises(HandshakeRefused, match="bad proof"):  # b's proof fails here
            await handshake(stream, impostor)
        await stream.send_all(impostor.data_to_send() + lies)  # its proof, then lies
        await read_until_closed(stream)
    await eventually(lambda: logged(caplog, "peer a: bad proof"))
    assert b.handler.requests == b.handler.posts == [] and not b.mesh.is_up("a")
    # It listens where a dead peer "c" should be, and the real mesh dials it.
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    a = await start_node(nursery, "a", {"c": listeners[0].socket.getsockname()[1]})
    async with listeners[0], await listeners[0].accept() as stream:
        impostor = fake(Role.ACCEPTOR, "c", secret=b"a guess at the cluster secret!")
        await stream.send_all(impostor.data_to_send())
        await stream.receive_some(65_536)  # a's HELLO
        impostor.receive_data(encode_frame({"kind": "HELLO", "version": 1, "shard": "a",
                                            "ring_signature": RING, "boot_id": "?",
                                            "nonce": b"n" * 16}))
        await stream.send_all(impostor.data_to_send() + lies)
        await read_until_closed(stream)
    await eventually(lambda: logged(caplog, "peer c: bad proof"))
    assert a.handler.requests == a.handler.posts == [] and not a.mesh.is_up("c")
    assert a.ups == []


async def test_garbage_on_the_port_closes_only_that_connection(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    nodes = await start_cluster(nursery, "ab")
    a, b = nodes["a"].mesh, nodes["b"]
    for garbage, reason in (
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "over the limit of 4096"),
        ((1 << 31).to_bytes(4, "big"), f"{1 << 31} bytes is over the limit"),
        (b"\x00\x00\x00\x03\xc1\xc1\xc1", "not valid msgpack"),
        (encode_frame({"kind": "HELLO", "version": "1"}), "'version' must be an integer"),
    ):
        async with await trio.open_tcp_stream(HOST, b.port) as stream:
            await stream.send_all(garbage)
            await read_until_closed(stream)
        await eventually(partial(logged, caplog, reason))
        assert await a.request("b", "echo", reason) == {"peer": "a", "body": reason}
    assert a.statistics()["b"].links == 1  # the established link never dropped
    assert b.handler.posts == []


async def test_a_bad_frame_on_an_open_link_closes_that_link_alone(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    # "a" here is a fake that knows the secret, then sends an ill-typed frame.
    c = await start_node(nursery, "c", {"a": UNUSED_PORT, "b": UNUSED_PORT})
    b = await start_node(nursery, "b", {"a": UNUSED_PORT, "c": c.port})
    await wait_up(b, c)
    for bad, reason in ((encode_frame({"kind": "REQ", "id": "1", "method": "echo",
                                       "body": 1, "deadline_ms": 5}), "'id' must be"),
                        ((2 << 20).to_bytes(4, "big"), "over the limit of 1048576")):
        async with await trio.open_tcp_stream(HOST, b.port) as stream:
            connection = fake(Role.DIALER, "a", peer="b")
            await handshake(stream, connection)
            await eventually(lambda: b.mesh.is_up("a"))
            await stream.send_all(connection.post("ok", 1) + bad)
            tail = await read_until_closed(stream)
            assert b"BYE" in tail  # b says why
        await eventually(lambda: not b.mesh.is_up("a"))
        assert [m for m in logged(caplog, "mesh link to a: ") if reason in m]
        assert await c.mesh.request("b", "echo", 1) == {"peer": "c", "body": 1}
    assert b.handler.posts == [("a", "ok", 1)] * 2
    assert b.mesh.statistics()["a"].link_failures == 2


async def test_a_silent_connection_is_dropped_after_the_handshake_timeout(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    b = await start_node(nursery, "b", {"a": UNUSED_PORT})
    async with await trio.open_tcp_stream(HOST, b.port) as stream:
        started = trio.current_time()
        hello = await read_until_closed(stream)  # b's HELLO, then nothing until it hangs up
        waited = trio.current_time() - started
    assert b"HELLO" in hello
    assert FAST.handshake_timeout - 0.05 <= waited < FAST.handshake_timeout + 0.5
    assert logged(caplog, "no handshake within 0.3 s")


# -- TLS ------------------------------------------------------------------------------------------


def tls_contexts(ca: trustme.CA) -> dict[str, ssl.SSLContext]:
    """Mutual TLS: every shard presents a certificate of the cluster's CA and wants one."""
    issued = ca.issue_cert(HOST)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issued.configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    issued.configure_cert(client)
    ca.configure_trust(client)
    return {"server_ssl": server, "client_ssl": client}


async def test_links_over_mutual_tls(nursery: trio.Nursery,
                                     caplog: pytest.LogCaptureFixture) -> None:
    contexts = tls_contexts(trustme.CA())
    nodes = await start_cluster(nursery, "ab", **contexts)
    assert await nodes["a"].mesh.request("b", "echo", "sealed") == {
        "peer": "a", "body": "sealed"}
    assert nodes["a"].mesh.post("b", "p", 1)
    await eventually(lambda: nodes["b"].handler.posts == [("a", "p", 1)])
    # Plain TCP to the TLS port is dropped, and a shard with another CA's cert too.
    async with await trio.open_tcp_stream(HOST, nodes["b"].port) as stream:
        connection = fake(Role.DIALER, "a", peer="b")
        with pytest.raises((MeshProtocolError, trio.BrokenResourceError)):
            with trio.fail_after(2):
                await handshake(stream, connection)
    stranger = await start_node(nursery, "a", {"b": nodes["b"].port},
                                **tls_contexts(trustme.CA()))
    await eventually(lambda: logged(caplog, "the connection broke during the handshake"))
    assert not stranger.mesh.is_up("b")
    assert await nodes["a"].mesh.request("b", "echo", 2) == {"peer": "a", "body": 2}


# -- statistics and construction ------------------------------------------------------------------


async def test_statistics_count_what_happened(nursery: trio.Nursery) -> None:
    nodes = await start_cluster(nursery, "ab")
    a = nodes["a"].mesh
    for n in range(10):
        await a.request("b", "echo", n)
    a.post("b", "p", 1)
    await eventually(lambda: len(nodes["b"].handler.posts) == 1)
    stats = a.statistics()["b"]
    assert (stats.state, stats.requests_sent, stats.posts_sent) == ("up", 10, 1)
    assert stats.latency_count == 10 == sum(stats.latency_buckets)
    assert stats.latency_max > 0 and stats.latency_sum <= 10 * stats.latency_max
    assert stats.frames_out >= 11 and stats.bytes_out > stats.frames_out
    assert stats.frames_in >= 10 and stats.links == 1 and stats.boot_id
    received = nodes["b"].mesh.statistics()["a"]
    assert received.requests_received == 10 and received.posts_received == 1
    stats.requests_sent = 999  # a snapshot, not the live counters
    assert a.statistics()["b"].requests_sent == 10


@pytest.mark.parametrize(("settings", "message"), [
    (dict(secret=b"short"), "at least 16 bytes"),
    (dict(peers=[PeerAddress("a", HOST, 1)]), "among its own peers"),
    (dict(peers=[PeerAddress("b", HOST, 1)] * 2), "unique"),
    (dict(server_ssl=ssl.create_default_context()), "both server_ssl and client_ssl"),
])
def test_a_mesh_refuses_a_bad_configuration(settings: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = dict(shard="a", listen=(HOST, 0), peers=[], secret=SECRET,
                                  ring_signature=RING, boot_id="x", handler=Recorder())
    values.update(settings)
    with pytest.raises(ValueError, match=message):
        Mesh(**values)


async def test_run_reports_the_bound_port_and_ends_cleanly(nursery: trio.Nursery) -> None:
    node = await start_node(nursery, "a", {"b": UNUSED_PORT})
    assert node.port == node.mesh.port and node.port > 0
    node.stop()
    await eventually(lambda: node.mesh.statistics()["b"].state == "down")
    with pytest.raises(OSError):
        await trio.open_tcp_stream(HOST, node.port)

