"""A hostile client against a real `freshrec serve`: over 10,000 malformed requests mixed with 1,000 valid
events over keep-alive connections. Nothing may answer 5xx or cut a connection, every valid event must be
in the event log exactly once (and nothing else), and the server's memory must not grow.

Requests are drawn by hypothesis strategies (`requests_with_valid_events`), many per example; each knows
what it must get: a 4xx that stores nothing (the body as a whole is unreadable), or a 202 that accepts
exactly its valid events and rejects exactly its bad ones, by index.
"""

import json
import queue
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from freshrec.live import LiveLoop, LiveLoopConfig
from freshrec.sources.eventlog import EventLogReader

pytestmark = pytest.mark.e2e

MAX_BODY_BYTES = 64 * 1024
EXAMPLES, MALFORMED_PER_EXAMPLE, VALID_PER_EXAMPLE = 500, 20, 2
NOW = 1_700_000_000


@dataclass
class Request:
    """One request and what it must get: ``status`` 202 with `accepted` events and `rejected` indices, or
    any 4xx of `refusals` (nothing stored)."""

    kind: str
    body: bytes
    content_type: str | None = "application/json"
    accepted: list[str] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    refusals: tuple[int, ...] = ()
    chunked: bool = False


# -- what the hostile tester sends -------------------------------------------------------------------------

valid_ids = count()
poison_ids = count()  # events inside bodies refused whole: none of them may reach the log


def event(event_id: str, **changes: Any) -> dict[str, Any]:
    record = {"event_id": event_id, "timestamp": NOW, "user_id": "u1", "item_id": "i1", "kind": "click"}
    record.update(changes)
    return record


def poison(n: int = 3) -> list[dict[str, Any]]:
    return [event(f"poison-{next(poison_ids)}") for _ in range(n)]


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


#: Bad values per field, as JSON text (spliced into an otherwise valid record): each rejects its event.
bad_ids = st.one_of(
    st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"', "true", "3.5", "[1]", '{"a": 1}', "null",
                     '""', '"   "', "1e400", "NaN", "-Infinity", '"' + "x" * 300 + '"']),
    st.integers(20, 6000).map(lambda digits: "9" * digits),  # beyond 64 bits, up to past 4,300 digits
    st.integers(20, 6000).map(lambda digits: "-" + "1" * digits),
)  # fmt: skip
bad_timestamps = st.one_of(
    st.sampled_from(['"yesterday"', "NaN", "Infinity", "-Infinity", "-1", "1.7e12", "true", "[]", "{}",
                     "null", '"\\ud800"', '"2024-13-45"', "1e999"]),
    st.integers(320, 6000).map(lambda digits: "9" * digits),
)  # fmt: skip
bad_values = st.one_of(
    st.sampled_from(['"abc"', "Infinity", "-Infinity", '"inf"', "true", "[1]", '{"x": 1}', '"\\ud800"']),
    st.integers(320, 6000).map(lambda digits: "7" * digits),
)
bad_context = st.one_of(
    st.sampled_from(['"\\ud800"', "[1, 2]", '{"nested": 1}', "Infinity", '"' + "c" * 300 + '"']),
    st.integers(20, 6000).map(lambda digits: "8" * digits),
)
bad_kinds = st.sampled_from(['"buy"', "3", "true", '"\\ud800"', "[]", "1.5"])
INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\xc3(",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\x80",
]
WRONG_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
               "application/xml", "text/json", "application/json; charset=latin-1", "application/ndjson-x",
               "image/png", "*/*", "application/octet-stream"]  # fmt: skip


def record_text(fields: dict[str, str]) -> bytes:
    """A JSON object from the JSON texts of its names and values (which json.dumps could not write)."""
    return ("{" + ", ".join(f"{name}: {text}" for name, text in fields.items()) + "}").encode()


def good_fields(event_id: str) -> dict[str, str]:
    return {json.dumps(name): json.dumps(value) for name, value in event(event_id).items()}


def named(name: str) -> str:
    return json.dumps(name)


EVENT_FAULTS = st.sampled_from(
    ["id", "timestamp", "value", "context", "kind", "missing", "record", "context-name", "nested-context"]
)
ID_FIELDS = st.sampled_from(["event_id", "user_id", "item_id"])
REQUIRED_FIELDS = st.sampled_from(["event_id", "timestamp", "user_id", "item_id"])
BAD_CONTEXT_OBJECTS = st.sampled_from(['"flat"', '{"user_id": 1}', '{"a": [[1]]}', "[1]"])
NOT_OBJECTS = st.sampled_from([b"1", b'"event"', b"null", b"[]", b"[1, 2]", b"true", b"9" * 5000])
# Strategies are made once: hypothesis validates each new one, which costs more than drawing from it.
SHARES, FEW, BOOLEANS = st.integers(0, 1000), st.integers(1, 5), st.booleans()


def bad_event(draw) -> bytes:
    """One record that must be rejected on its own: a bad field, a missing one, or not an object."""
    fields = good_fields(f"bad-{next(poison_ids)}")
    fault = draw(EVENT_FAULTS)
    if fault == "id":
        fields[named(draw(ID_FIELDS))] = draw(bad_ids)
    elif fault == "timestamp":
        fields[named("timestamp")] = draw(bad_timestamps)
    elif fault == "value":
        fields[named("value")] = draw(bad_values)
    elif fault == "context":
        fields[named("device")] = draw(bad_context)
    elif fault == "kind":
        fields[named("kind")] = draw(bad_kinds)
    elif fault == "missing":
        del fields[named(draw(REQUIRED_FIELDS))]
    elif fault == "context-name":
        fields['"\\ud800name"'] = '"x"'  # a lone surrogate, escaped, in a context field's name
    elif fault == "nested-context":
        fields[named("context")] = draw(BAD_CONTEXT_OBJECTS)
    else:
        return draw(NOT_OBJECTS)
    return record_text(fields)


def share(draw, n: int) -> int:
    """A drawn integer in 0..n. Drawn as a share, not as ``integers(0, n)``: n depends on the ids in the
    body, which count up across examples, and hypothesis wants the same choices to mean the same draws."""
    return n * draw(SHARES) // 1000


#: Kinds of whole-body faults, the common ones several times (a drawn kind is equally likely per entry).
WHOLE_BODY_FAULTS = st.sampled_from(
    [
        *["utf8", "deep", "truncated", "content-type"] * 3,
        "garbage",
        "empty",
        "bad-line",
        "oversized",
        "lines-depth",
    ]
)
INVALID_BYTES = st.sampled_from(INVALID_UTF8)
DEPTHS = st.integers(33, 3000)
NESTINGS = st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")])
CONTENT_TYPES = st.sampled_from(WRONG_TYPES) | st.text("abcdefghijklmnop/+-.", min_size=1).map(
    "text/".__add__
)
GARBAGE = st.binary(max_size=64)
BLANKS = st.sampled_from([b"", b" ", b"\n\n", b"\t \r\n"])
LINE_INDICES = st.integers(0, 3)
OVERSIZES = st.integers(MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES)
LINES_TYPES = st.sampled_from(["application/x-ndjson", "application/jsonl"])
VALID_FORMS = st.sampled_from(["array", "object", "ndjson", "json-lines-as-json"])
VALUES = st.sampled_from([1.5, None])
PER_EVENT_ONE_IN = st.integers(0, 3)


def whole_body_fault(draw) -> Request:
    """A body refused whole (400 / 413 / 415): none of the events it carries may be stored."""
    kind = draw(WHOLE_BODY_FAULTS)
    body = dumps(poison())
    if kind == "utf8":
        at = share(draw, len(body))
        return Request(kind, body[:at] + draw(INVALID_BYTES) + body[at:], refusals=(400,))
    if kind == "deep":
        depth = draw(DEPTHS)
        opener, closer = draw(NESTINGS)
        inner = dumps(poison(1)[0])
        return Request(kind, opener * depth + inner + closer * depth, refusals=(400,))
    if kind == "truncated":
        return Request(kind, body[: share(draw, len(body) - 1)], refusals=(400,))
    if kind == "content-type":
        return Request(kind, body, content_type=draw(CONTENT_TYPES), refusals=(415,))
    if kind == "garbage":  # random bytes: if they happen to be JSON they hold no valid event
        return Request(kind, draw(GARBAGE), refusals=(400, 202))
    if kind == "empty":
        return Request(kind, draw(BLANKS), refusals=(400,))
    if kind == "bad-line":  # JSON lines, one of them broken: the whole body is refused
        lines = [dumps(record) for record in poison(4)]
        broken = draw(LINE_INDICES)
        lines[broken] = lines[broken][: 1 + share(draw, len(lines[broken]) - 2)]
        return Request(kind, b"\n".join(lines), content_type="application/x-ndjson", refusals=(400,))
    if kind == "lines-depth":
        return Request(kind, b"[" * 40 + b"]" * 40, content_type="application/jsonl", refusals=(400,))
    size = draw(OVERSIZES)
    padded = body[:-1] + b" " * (size - len(body)) + b"]"
    return Request(kind, padded, refusals=(413,), chunked=draw(BOOLEANS))


def per_event_faults(draw, good: list[str]) -> Request:
    """An array (or JSON lines) of bad records around the valid events `good`: a 202 that keeps exactly
    the good ones."""
    records = [(dumps(event(event_id)), None) for event_id in good]
    records += [(bad_event(draw), "bad") for _ in range(draw(FEW))]
    order = draw(st.permutations(range(len(records))))
    records = [records[i] for i in order]
    lines = draw(BOOLEANS)
    body = (
        b"\n".join(text for text, _ in records) if lines else b"[" + b", ".join(t for t, _ in records) + b"]"
    )
    kind = "per-event-lines" if lines else "per-event"
    content_type = draw(LINES_TYPES) if lines else None
    return Request(
        kind,
        body,
        content_type=content_type,
        accepted=[json.loads(text)["event_id"] for text, mark in records if mark is None],
        rejected=[index for index, (_, mark) in enumerate(records) if mark == "bad"],
    )


def valid_request(draw, good: list[str]) -> Request:
    form = draw(VALID_FORMS)
    events = [event(event_id, value=draw(VALUES)) for event_id in good]
    events = [{k: v for k, v in e.items() if v is not None} for e in events]
    if form == "object" and len(events) == 1:
        return Request("valid", dumps(events[0]), content_type=None, accepted=good)
    if form in ("ndjson", "json-lines-as-json"):
        body = b"\n".join(dumps(e) for e in events) + b"\n"
        content_type = "application/x-ndjson" if form == "ndjson" else "application/json"
        return Request("valid", body, content_type=content_type, accepted=good)
    return Request("valid", dumps(events), content_type="application/json; charset=utf-8", accepted=good)


@st.composite
def requests_with_valid_events(draw) -> list[Request]:
    """`MALFORMED_PER_EXAMPLE` malformed requests and `VALID_PER_EXAMPLE` valid events, each alone in a
    valid request or among bad records in a malformed one, in a drawn order."""
    requests, malformed = [], 0
    for _ in range(VALID_PER_EXAMPLE):
        good = [f"valid-{next(valid_ids)}"]
        if draw(BOOLEANS):
            requests.append(valid_request(draw, good))
        else:
            requests.append(per_event_faults(draw, good))
            malformed += 1
    for _ in range(MALFORMED_PER_EXAMPLE - malformed):
        requests.append(per_event_faults(draw, []) if draw(PER_EVENT_ONE_IN) == 0 else whole_body_fault(draw))
    return draw(st.permutations(requests))


# -- sending -------------------------------------------------------------------------------------------


class Tally:
    """What was sent and every way an answer was wrong (from several sending threads)."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.valid_sent: list[str] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def send(self, client: httpx.Client, request: Request) -> None:
        headers = {} if request.content_type is None else {"content-type": request.content_type}
        content: Any = request.body
        if request.chunked:
            content = (request.body[i : i + 16_384] for i in range(0, len(request.body), 16_384))
        try:
            answer = client.post("/events", content=content, headers=headers)
        except httpx.TransportError as error:
            with self._lock:
                self.kinds[request.kind] += 1
                self.problems.append(f"{request.kind}: connection error {error!r}")
            return
        wrong = self._check(request, answer)
        with self._lock:
            self.kinds[request.kind] += 1
            self.valid_sent += request.accepted
            self.statuses[answer.status_code] += 1
            if wrong:
                self.problems.append(f"{request.kind}: {wrong}; {request.body[:120]!r}: {answer.text[:300]}")

    @staticmethod
    def _check(request: Request, answer: httpx.Response) -> str | None:
        if answer.status_code >= 500:
            return f"answered {answer.status_code}"
        if request.refusals:
            if answer.status_code not in request.refusals:
                return f"answered {answer.status_code}, expected one of {request.refusals}"
            if answer.status_code == 202 and answer.json()["accepted"] != 0:
                return "accepted an event from garbage"
            return None
        if answer.status_code != 202:
            return f"answered {answer.status_code}, expected 202"
        result = answer.json()
        if result["accepted"] != len(request.accepted):
            return f"accepted {result['accepted']}, expected {len(request.accepted)}"
        if [r["index"] for r in result["rejected"]] != request.rejected:
            return f"rejected {[r['index'] for r in result['rejected']]}, expected {request.rejected}"
        return None


class Senders:
    """`count` threads sending what `put` queues, each over its own keep-alive connection, while the
    main thread draws the next requests."""

    def __init__(self, base_url: str, tally: Tally, count: int = 3) -> None:
        self.queue: queue.Queue[Request | None] = queue.Queue(maxsize=256)
        self.clients = [httpx.Client(base_url=base_url, timeout=60) for _ in range(count)]
        self.threads = [threading.Thread(target=self._send, args=(c, tally)) for c in self.clients]
        for thread in self.threads:
            thread.start()

    def _send(self, client: httpx.Client, tally: Tally) -> None:
        while (request := self.queue.get()) is not None:
            tally.send(client, request)

    def put(self, request: Request) -> None:
        self.queue.put(request)

    def close(self) -> list[int]:
        """Stop the threads; the status of a last request over each connection, which must still work."""
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()
        statuses = [client.get("/healthz").status_code for client in self.clients]
        for client in self.clients:
            client.close()
        return statuses


def resident_megabytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def logged_event_ids(log_dir: Path) -> Counter[str]:
    with EventLogReader(log_dir, start_offset="earliest") as reader:
        return Counter(str(i) for batch in reader.batches(4096) for i in batch.columns["event_id"].tolist())


def test_no_malformed_request_reaches_a_5xx_and_every_valid_event_is_logged_once(tmp_path: Path) -> None:
    config = LiveLoopConfig(
        tmp_path, model="popularity", publish_ms=1000, serve_args=("--max-body-bytes", str(MAX_BODY_BYTES))
    )
    tally = Tally()
    with LiveLoop(config) as live, httpx.Client(base_url=live.base_url, timeout=60) as client:
        assert live.server is not None
        pid = live.server.pid
        # Warm up every path (imports, caches, the first version loaded) before measuring memory.
        warm_up = [
            b"[" * 100 + b"]" * 100,
            b"\xff",
            b'[{"event_id": "\\ud800"}]',
            b" " * (MAX_BODY_BYTES + 1),
        ]
        for body in warm_up:
            client.post("/events", content=body, headers={"content-type": "application/json"})
        client.post("/events", content=b"[]", headers={"content-type": "text/plain"})
        live.wait_until(lambda: live.get("/readyz")["ready"], 60, "a version served")
        # The version stays served; the trainer's learning would only take CPU from the run.
        live.kill_trainer(signal.SIGTERM)
        rss_before = resident_megabytes(pid)
        started = time.monotonic()
        senders = Senders(live.base_url, tally)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(requests_with_valid_events())
        def send_all(requests: list[Request]) -> None:
            for request in requests:
                senders.put(request)

        try:
            send_all()
        finally:
            assert senders.close() == [200, 200, 200]  # every keep-alive connection still works

        # Bodies far over the limit, declared and streamed: refused without being read whole.
        for chunked in (False, True):
            huge = Request("50 MB", b"[" + b" " * (50 << 20) + b"]", refusals=(413,), chunked=chunked)
            tally.send(client, huge)
        sending = time.monotonic() - started
        assert client.get("/healthz").status_code == 200  # the keep-alive connection still works
        rss_after = resident_megabytes(pid)
        logged = logged_event_ids(live.directory / "log")

    malformed = sum(n for kind, n in tally.kinds.items() if kind != "valid")
    summary = f"{dict(tally.kinds)}, statuses {dict(tally.statuses)}, {sending:.0f} s"
    assert tally.problems == [], f"{len(tally.problems)} wrong answers ({summary}): {tally.problems[:10]}"
    assert malformed >= 10_000 and len(tally.valid_sent) >= 1_000, summary
    assert set(tally.statuses) <= {202, 400, 413, 415}, summary
    # Every valid event exactly once, and nothing else: no event of a refused body was stored.
    assert logged == Counter(tally.valid_sent), [i for i in logged if not i.startswith("valid-")][:10]
    assert rss_after - rss_before < 50, f"RSS grew from {rss_before:.0f} MB to {rss_after:.0f} MB"
