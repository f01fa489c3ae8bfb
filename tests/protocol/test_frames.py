from __future__ import annotations

import json

import msgpack
import pytest

from chatd.domain.models import Message
from chatd.protocol import frames
from chatd.protocol.frames import FrameError, decode_client_frame


def test_batches_round_trip_in_both_codecs() -> None:
    message = Message(5, 7, 1, 9, 3, "c1", "application/octet-stream", b"\x00\xff", 123)
    batch = [frames.message_frame(message), frames.pong_frame("r1"),
             frames.error_frame("bad", "no", None)]
    as_json = json.loads(frames.encode_frames(batch, "json"))
    as_msgpack = msgpack.unpackb(frames.encode_frames(batch, "msgpack"))
    assert as_json["type"] == as_msgpack["type"] == "batch"
    assert [f["type"] for f in as_json["frames"]] == ["message", "pong", "error"]
    # Binary bodies: base64 in JSON, raw bytes in msgpack; everything else is equal.
    assert as_json["frames"][0]["message"]["body"] == "AP8="
    assert as_msgpack["frames"][0]["message"]["body"] == b"\x00\xff"
    as_json["frames"][0]["message"]["body"] = b"\x00\xff"
    assert as_json == as_msgpack
    assert frames.encode_frames(batch[1:2], "json") == b'{"type":"pong","req":"r1"}'


def test_client_frames_parse_in_both_codecs() -> None:
    send = {"type": "send", "req": "r", "conversation_id": "12", "client_msg_id": "c",
            "content_type": "image/png", "body": "AAE="}
    parsed = decode_client_frame(json.dumps(send), "json")
    assert isinstance(parsed, frames.SendFrame) and parsed.body == b"\x00\x01"
    raw = decode_client_frame(msgpack.packb({**send, "body": b"\x00\x01"}), "msgpack")
    assert raw == parsed
    sync = decode_client_frame('{"type": "sync", "cursors": {"12": 4}}', "json")
    assert sync == frames.SyncFrame({12: 4})


@pytest.mark.parametrize("data, code", [
    ("nope", "malformed_frame"),
    ("[1]", "malformed_frame"),
    (b"\x80", "bad_frame"),
    ('{"type": "fly"}', "unknown_type"),
    ('{"type": "send", "conversation_id": "1"}', "missing_field"),
    ('{"type": "ack", "conversation_id": "1", "seq": true}', "invalid_field"),
    ('{"type": "ack", "conversation_id": "1", "seq": -1}', "invalid_field"),
    ('{"type": "typing", "conversation_id": 0}', "invalid_field"),
    ('{"type": "ping", "req": 5}', "invalid_field"),
    ('{"type": "sync", "cursors": {"x": 1}}', "invalid_field"),
    ('{"type": "send", "req": "r", "conversation_id": "1", "client_msg_id": "c",'
     ' "content_type": "text/plain", "body": 5}', "invalid_field"),
])
def test_bad_client_frames_are_named(data: str | bytes, code: str) -> None:
    with pytest.raises(FrameError) as error:
        decode_client_frame(data, "json")
    assert error.value.code == code and error.value.message


def test_errors_keep_the_request_id() -> None:
    with pytest.raises(FrameError) as error:
        decode_client_frame('{"type": "read", "req": "r9", "conversation_id": "x", "seq": 1}',
                            "json")
    assert error.value.req == "r9"


def test_a_send_frame_carries_reply_to_and_mentions() -> None:
    frame = frames.send_request("r1", 9, "c1", "hi @bob", reply_to=4, mentions=[7, "8"])
    assert (frame["reply_to"], frame["mentions"]) == (4, ["7", "8"])
    for codec in ("json", "msgpack"):
        parsed = decode_client_frame(frames.encode_request(frame, codec), codec)
        assert isinstance(parsed, frames.SendFrame)
        assert (parsed.reply_to, parsed.mentions) == (4, (7, 8))
    plain = frames.send_request("r2", 9, "c2", "hi")
    assert "reply_to" not in plain and "mentions" not in plain
    parsed = decode_client_frame(json.dumps({**plain, "reply_to": None}), "json")
    assert isinstance(parsed, frames.SendFrame) and (parsed.reply_to, parsed.mentions) == (0, ())
    for field, bad in (("reply_to", -1), ("reply_to", "4"), ("reply_to", True),
                       ("reply_to", 1.5), ("mentions", "7"), ("mentions", ["x"]),
                       ("mentions", [7] * 51), ("mentions", {"7": 1})):
        with pytest.raises(FrameError) as caught:
            decode_client_frame(json.dumps({**plain, field: bad}), "json")
        assert (caught.value.code, caught.value.req) == ("invalid_field", "r2"), (field, bad)


def test_a_message_payload_shows_replies_mentions_and_forwards() -> None:
    quote = {"sender_id": "3", "content_type": "text/plain", "text": "hi"}
    message = Message(1, 2, 5, 7, 8, "c", "text/plain", "re", 99, reply_to=4,
                      mentions=(3,), forwarded=5, quote=quote)
    payload = frames.message_payload(message)
    assert (payload["reply_to"], payload["quote"], payload["mentions"]) == (4, quote, ["3"])
    assert payload["forwarded"] is True and payload["forwarded_many"] is True
    once = frames.message_payload(Message(1, 2, 5, 7, 8, "c", "text/plain", "x", 99,
                                          forwarded=1))
    assert once["forwarded"] is True and "forwarded_many" not in once
