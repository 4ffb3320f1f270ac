"""P7's load client (bench/streams.py): its response reader and its latency histograms, fed
the bytes a streamed turn arrives in, cut at every possible place."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench.streams import ResponseReader, Tally, delta_text, expected_text, percentile

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
FRAMES = [
    'event: meta\nid: 1\ndata: {"conversation_id": "c", "message_id": "m"}\n\n',
    ": ping\n\n",
    'event: delta\nid: 2\ndata: {"text": "Sure"}\n\n',
    'event: delta\nid: 3\ndata: {"text": ", here\\r\\n"}\n\n',
    'event: done\nid: 4\ndata: {"response": "Sure, here\\r\\n"}\n\n',
]


def chunked(pieces: list[str]) -> bytes:
    body = b""
    for piece in pieces:
        encoded = piece.encode()
        body += f"{len(encoded):x}\r\n".encode() + encoded + b"\r\n"
    return body + b"0\r\n\r\n"


def read_in_two(data: bytes, cut: int) -> tuple[ResponseReader, list[tuple[str, str, str]]]:
    reader = ResponseReader()
    return reader, reader.feed(data[:cut]) + reader.feed(data[cut:])


def test_every_cut_of_a_chunked_stream_gives_the_same_frames() -> None:
    data = HEAD + chunked(FRAMES)
    whole = ResponseReader().feed(data)
    assert [(name, event_id) for name, event_id, _ in whole] == [
        ("meta", "1"), ("delta", "2"), ("delta", "3"), ("done", "4"),
    ]  # fmt: skip
    for cut in range(1, len(data)):
        reader, frames = read_in_two(data, cut)
        assert frames == whole, f"cut at byte {cut}"
        assert reader.ended and reader.status == 200


def test_a_frame_split_over_chunks_and_byte_by_byte() -> None:
    text = "".join(FRAMES)
    data = HEAD + chunked([text[:7], text[7:40], text[40:]])
    reader = ResponseReader()
    frames = [frame for byte in range(len(data)) for frame in reader.feed(data[byte : byte + 1])]
    texts = [delta_text("chatsvc", frame) for frame in frames]
    assert "".join(t for t in texts if t) == "Sure, here\r\n"
    assert reader.ended


def test_an_error_response_with_a_length_is_read_whole() -> None:
    body = json.dumps({"status": 503, "code": "overloaded"}).encode()
    data = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
        b"Retry-After: 2\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    reader, frames = read_in_two(data, len(data) - 3)
    assert frames == [] and reader.ended
    assert reader.status == 503 and reader.headers["retry-after"] == "2"
    assert json.loads(reader.body)["code"] == "overloaded"


def test_the_fakes_openai_chunks_give_their_content() -> None:
    def chunk(delta: dict, choices: bool = True) -> str:
        body = {"choices": [{"index": 0, "delta": delta}] if choices else []}
        return f"data: {json.dumps(body)}\n\n"

    data = HEAD + chunked(
        [chunk({"role": "assistant", "content": "Sure"}), chunk({"content": ","}), chunk({}),
         chunk({}, choices=False), "data: [DONE]\n\n"]
    )  # fmt: skip
    frames = ResponseReader().feed(data)
    assert [delta_text("fake", frame) for frame in frames] == ["Sure", ",", None, None, None]
    assert frames[-1][2] == "[DONE]"


def test_expected_text_is_the_fakes_answer() -> None:
    assert expected_text(3) == "Sure, here"
    assert len(expected_text(100)) > 100


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0), (0.01, 1.0)]
)
def test_percentiles_of_a_histogram_of_tenths(fraction: float, expected: float) -> None:
    histogram = Counter({value * 10: 1 for value in range(1, 101)})  # 1 ms … 100 ms
    assert percentile(histogram, fraction) == pytest.approx(expected)


def test_tallies_of_two_processes_add_up() -> None:
    one = Tally(ttfd=Counter({500: 2}), turns=2, ok=1, failures=Counter({"timeout": 1}))
    two = Tally.from_json(json.loads(json.dumps(Tally(ttfd=Counter({700: 1}), turns=1).as_json())))
    merged = one.merge(two)
    assert merged.turns == 3 and merged.processes == 2
    assert merged.failures == Counter({"timeout": 1})
    assert percentile(merged.ttfd, 1.0) == pytest.approx(70.0)
