"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real S3 server.

The store under test talks to the proxy as if it were the server. Each request is classified
(``get``, ``head``, ``list``, ``put``, ``conditional_put``, ``multipart``, ``delete``, or
``other`` for bucket administration) from its method, query and headers, and then either
forwarded untouched or hit by one fault:

- ``500``, ``503`` (an S3 ``SlowDown`` XML body), ``429``: answered by the proxy, never forwarded;
- ``reset``: the client's connection is reset before any reply, the request never forwarded;
- ``reset_mid_body``: forwarded, then the reply's body is cut by a reset halfway;
- ``truncate``: forwarded, then the reply's body ends early (short against Content-Length);
- ``latency``: forwarded after a pause of ``latency_s``;
- ``apply_then_500``: forwarded (the server applies it), then answered 500;
- ``cut_etag``: forwarded, and the reply's ETag header cut in half (a malformed reply);
- ``apply_then_drop``: forwarded, the server's reply discarded and the client's connection reset;
- ``apply_late``: the client's connection is reset at once, the request is forwarded
  ``late_s`` later, when the client has already given up on it.

Faults come from a rate (``rate=0.05``: each eligible request is hit with that probability,
the kind drawn from those allowed for its class, from a seeded ``random.Random``) and from a
script (``proxy.script("conditional_put", "apply_then_drop")``: the next conditional PUT gets
that fault), the script first. ``proxy.injected`` counts what was injected per
``(class, kind)``; ``proxy.requests`` counts every request per class; ``proxy.log`` keeps the
last requests as ``(class, method, path, Range header, fault)``.

Buffers are bounded: request bodies are held whole (``apply_late`` must replay them) up to
``max_body`` bytes; reply bodies stream through in chunks of 64 KiB. One thread per client
connection (``ThreadingHTTPServer``), each with its own keep-alive connection to the server.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

CLASSES = ("get", "head", "list", "put", "conditional_put", "multipart", "delete")
KINDS = (
    "500",
    "503",
    "429",
    "reset",
    "reset_mid_body",
    "truncate",
    "latency",
    "apply_then_500",
    "cut_etag",
    "apply_then_drop",
    "apply_late",
)
#: Faults that cut a reply's body need a body to cut.
_BODY_KINDS = frozenset({"reset_mid_body", "truncate"})
_BODY_CLASSES = frozenset({"get", "list"})
_CHUNK = 64 * 1024
_HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te"})

_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
_TOO_MANY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>TooManyRequests</Code>'
    b"<Message>Too many requests.</Message></Error>"
)
_ERROR_REPLIES = {"500": (500, _INTERNAL), "503": (503, _SLOWDOWN), "429": (429, _TOO_MANY)}


def classify(method: str, target: str, headers: Any) -> str:
    """The request class of an S3 call, from its method, path, query and headers."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.strip("/")
    has_key = "/" in path  # path-style: /bucket/key
    conditional = bool(headers.get("If-None-Match")) or bool(headers.get("x-obs-forbid-overwrite"))
    if method == "HEAD":
        return "head" if has_key else "other"
    if method == "GET":
        if "uploads" in query or "uploadId" in query:
            return "list"
        return "get" if has_key else "list"
    if method == "PUT":
        if not has_key:
            return "other"
        if "uploadId" in query:
            return "multipart"
        return "conditional_put" if conditional else "put"
    if method == "POST":
        if "delete" in query:
            return "delete"
        if "uploadId" in query:
            return "conditional_put" if conditional else "multipart"
        if "uploads" in query:
            return "multipart"
        return "other"
    if method == "DELETE":
        if "uploadId" in query:
            return "multipart"
        return "delete" if has_key else "other"
    return "other"


_ETAG_CLASSES = frozenset({"get", "head", "put", "conditional_put", "multipart"})


def _eligible(kind: str, klass: str) -> bool:
    if kind == "cut_etag":
        return klass in _ETAG_CLASSES
    return kind not in _BODY_KINDS or klass in _BODY_CLASSES


class FaultProxy:
    """A proxy at ``endpoint_url`` that forwards to ``upstream`` and injects faults.

    Parameters:
        upstream: the real server's URL (``http://127.0.0.1:PORT``).
        seed: seeds the random draws, so a failing run can be repeated.
        rate: probability that an eligible request is hit by a fault.
        kinds: the fault kinds the rate draws from (default: all).
        classes: the request classes the rate applies to (default: all but ``other``).
        latency_s: the pause of a ``latency`` fault.
        late_s: how long an ``apply_late`` request is held before it is forwarded.
        max_body: the largest request body held in memory; bigger requests get 413.
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        rate: float = 0.0,
        kinds: Iterable[str] = KINDS,
        classes: Iterable[str] = CLASSES,
        latency_s: float = 0.2,
        late_s: float = 0.05,
        max_body: int = 64 * 2**20,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.rate = rate
        self.kinds = tuple(kinds)
        self.classes = frozenset(classes)
        unknown = (set(self.kinds) - set(KINDS)) | (self.classes - set(CLASSES))
        if unknown:
            raise ValueError(f"unknown fault kinds or request classes: {sorted(unknown)}")
        self.latency_s = latency_s
        self.late_s = late_s
        self.max_body = max_body
        self.injected: Counter[tuple[str, str]] = Counter()
        self.requests: Counter[str] = Counter()
        self.log: deque[tuple[str, str, str, str | None, str | None]] = deque(maxlen=10_000)
        self._random = random.Random(seed)
        self._script: dict[str, deque[str]] = {}
        self._lock = threading.Lock()
        self._late: list[threading.Thread] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()

    # --- control ---------------------------------------------------------------------------

    def script(self, klass: str, kind: str, count: int = 1) -> None:
        """The next ``count`` requests of ``klass`` get fault ``kind``, before any drawn by rate."""
        if klass not in CLASSES or kind not in KINDS:
            raise ValueError(f"unknown request class {klass!r} or fault kind {kind!r}")
        with self._lock:
            self._script.setdefault(klass, deque()).extend([kind] * count)

    def clear(self) -> None:
        """No more faults: rate 0 and an empty script (counters are kept)."""
        with self._lock:
            self.rate = 0.0
            self._script.clear()

    def total_injected(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    def choose(self, klass: str, method: str = "", path: str = "", range_: str | None = None) -> str | None:
        """The fault for the next request of ``klass``, or None to forward it untouched."""
        with self._lock:
            self.requests[klass] += 1
            queue = self._script.get(klass)
            if queue:
                kind: str | None = queue.popleft()
            elif klass in self.classes and self.rate > 0 and self._random.random() < self.rate:
                options = [k for k in self.kinds if _eligible(k, klass)]
                kind = self._random.choice(options) if options else None
            else:
                kind = None
            if kind is not None:
                self.injected[(klass, kind)] += 1
            self.log.append((klass, method, path, range_, kind))
            return kind

    def close(self) -> None:
        """Stop serving and wait for held (``apply_late``) requests to be forwarded."""
        self._server.shutdown()
        self._server.server_close()
        for thread in list(self._late):
            thread.join(timeout=10)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- forwarding ------------------------------------------------------------------------

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)

    def forward_late(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """Send a held request ``late_s`` from now, on a connection of its own; the reply is dropped."""

        def later() -> None:
            time.sleep(self.late_s)
            conn = self.connect()
            try:
                _send(conn, method, target, headers, body)
                conn.getresponse().read()
            except (OSError, http.client.HTTPException) as exc:
                logger.warning("late %s %s failed: %s", method, target, exc)
            finally:
                conn.close()

        thread = threading.Thread(target=later, name="faultproxy-late", daemon=True)
        with self._lock:
            self._late = [t for t in self._late if t.is_alive()]
            self._late.append(thread)
        thread.start()


def _send(
    conn: http.client.HTTPConnection, method: str, target: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    if body or method in ("PUT", "POST"):
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body if body else None)


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.proxy = proxy
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered before the body is read
    proxy: FaultProxy
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("faultproxy: " + format, *args)

    def do_any(self) -> None:
        try:
            self._handle()
        except OSError as exc:  # the client went away mid-reply: nothing more to tell it
            logger.debug("faultproxy: client of %s %s went away: %s", self.command, self.path, exc)
            self.close_connection = True
            self._drop_upstream()

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            return
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS and k.lower() != "content-length"]
        klass = classify(self.command, self.path, self.headers)
        kind = self.proxy.choose(klass, self.command, self.path, self.headers.get("Range"))
        if kind in _ERROR_REPLIES:
            status, payload = _ERROR_REPLIES[kind]
            self._reply_error(status, payload)
            return
        if kind == "reset":
            self._reset()
            return
        if kind == "apply_late":
            self._reset()
            self.proxy.forward_late(self.command, self.path, headers, body)
            return
        if kind == "latency":
            time.sleep(self.proxy.latency_s)
        try:
            resp = self._forward(headers, body)
        except (OSError, http.client.HTTPException) as exc:
            logger.warning("faultproxy: upstream failed for %s %s: %s", self.command, self.path, exc)
            self._drop_upstream()
            self._reset()
            return
        if kind == "apply_then_drop":
            resp.read()
            self._reset()
            return
        if kind == "apply_then_500":
            resp.read()
            self._reply_error(500, _INTERNAL)
            return
        self._relay(resp, kind)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > self.proxy.max_body:
                    self._reply_error(413, b"request body too large for the fault proxy")
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(length or 0)
        if n > self.proxy.max_body:
            self._reply_error(413, b"request body too large for the fault proxy")
            self.close_connection = True
            return None
        return self.rfile.read(n) if n else b""

    def _forward(self, headers: list[tuple[str, str]], body: bytes) -> http.client.HTTPResponse:
        for attempt in range(2):  # a kept-alive upstream connection may have been closed by the server
            if self._upstream is None:
                self._upstream = self.proxy.connect()
            try:
                _send(self._upstream, self.command, self.path, headers, body)
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_upstream()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _relay(self, resp: http.client.HTTPResponse, kind: str | None) -> None:
        """Pass the server's reply on, cutting its body if ``kind`` says so."""
        chunked = resp.getheader("Transfer-Encoding", "").lower() == "chunked"
        length = resp.getheader("Content-Length")
        if chunked or (length is None and self.command != "HEAD"):
            payload = resp.read()  # re-framed with a Content-Length; list replies are small
            length = str(len(payload))
            pending: bytes | None = payload
        else:
            pending = None
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
                if kind == "cut_etag" and name.lower() == "etag":
                    value = value[: len(value) // 2]
                self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", length)
        if resp.will_close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            resp.read()
            return
        total = int(length or 0)
        cut = total // 2 if kind in _BODY_KINDS and total > 1 else None
        sent = 0
        while sent < total:
            want = _CHUNK if cut is None else min(_CHUNK, cut - sent)
            if pending is not None:
                chunk, pending = pending[:want], pending[want:]
            else:
                chunk = resp.read(min(want, total - sent))
            if not chunk:
                break
            self.wfile.write(chunk)
            sent += len(chunk)
            if cut is not None and sent >= cut:
                break
        if cut is None:
            resp.read()  # drained: the upstream connection is ready for the next request
            if resp.will_close:
                self._drop_upstream()
            return
        resp.close()
        self._drop_upstream()
        if kind == "truncate":
            self.wfile.flush()
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self._reset()

    def _reply_error(self, status: int, payload: bytes) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close the client's connection with a TCP RST: the client sees a reset, not a reply."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.rfile.close()  # drops the file's hold on the socket, so close() really closes
            self.connection.close()

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()
        self._drop_upstream()


@dataclass
class ProxiedBucket:
    """A fresh bucket on a real server, reached through a :class:`FaultProxy`.

    ``url`` and ``options`` open the store through the proxy (``open_store(url, **options)``);
    ``server`` reaches the same bucket directly, for setup and for checking what really landed.
    """

    proxy: FaultProxy
    url: str
    options: dict[str, str]
    server: Any

    @property
    def bucket(self) -> str:
        return self.url.split("/")[2]


def proxied_bucket(server: Any, prefix: str = "repo", **proxy_options: Any) -> ProxiedBucket:
    """Create a bucket on ``server`` and a proxy in front of it; the caller closes the proxy."""
    url, options = server.make_bucket(prefix)
    proxy = FaultProxy(server.endpoint_url, **proxy_options)
    return ProxiedBucket(proxy, url, {**options, "endpoint_url": proxy.endpoint_url}, server)
