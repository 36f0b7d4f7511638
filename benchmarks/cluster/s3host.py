"""One S3 "region": SeaweedFS on the host's loopback, reachable only through a delay proxy.

Run inside a region's namespace (``ip netns exec tqsc-<run>-x python -m
benchmarks.cluster.s3host ...``). It starts ``weed server`` the way the test suite does
(tests/s3servers.py), on the namespace's own 127.0.0.1, then serves :class:`DelayProxy` on
the host's address, so every client on another host pays the added round trip. When the
proxy listens it writes ``--ready`` (JSON: endpoint, keys); on SIGTERM it stops the proxy
and SIGKILLs SeaweedFS.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from s3servers import start_seaweedfs  # noqa: E402

from .delayproxy import DelayProxy, Shaping, run  # noqa: E402

log = logging.getLogger(__name__)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="data directory (made fresh)")
    p.add_argument("--listen", required=True, help="ADDRESS:PORT of the proxy on this host")
    p.add_argument("--ready", type=Path, required=True, help="JSON written once the region serves")
    p.add_argument("--stats", type=Path, required=True, help="JSON of bytes per client, kept current")
    p.add_argument("--rtt-ms", type=float, default=20.0)
    p.add_argument("--jitter-ms", type=float, default=1.0)
    p.add_argument("--stall-probability", type=float, default=0.0)
    p.add_argument("--stall-ms", type=float, default=200.0)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s s3host: %(message)s")
    a.dir.mkdir(parents=True, exist_ok=True)
    server = start_seaweedfs(a.dir)
    try:
        upstream = urlparse(server.endpoint_url)
        host, _, port = a.listen.rpartition(":")
        shaping = Shaping(
            delay_s=a.rtt_ms / 2000,
            jitter_s=a.jitter_ms / 1000,
            stall_probability=a.stall_probability,
            stall_s=a.stall_ms / 1000,
        )
        proxy = DelayProxy((host, int(port)), (upstream.hostname, upstream.port), shaping, stats_path=a.stats)

        def ready() -> None:
            info = {
                "endpoint_url": f"http://{a.listen}",
                "direct_url": server.endpoint_url,
                "access_key": server.access_key,
                "secret_key": server.secret_key,
                "pid": os.getpid(),
            }
            tmp = a.ready.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, a.ready)

        run(proxy, ready)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
