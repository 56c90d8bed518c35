"""Submit measurements to Kiln with Librato's own Python client (librato-metrics 3.1.0).

Usage: librato_client.py HOST:PORT TOKEN NOW
Only the host changes from a Librato setup: HTTP basic auth with the token as password.
"""
import sys

import librato


def main() -> int:
    host, token, now = sys.argv[1], sys.argv[2], int(sys.argv[3])
    api = librato.connect("ops@example.com", token, hostname=host, protocol="http")
    # Legacy gauges and counters, one request each.
    api.submit("app.latency", 120.5, source="web1", measure_time=now - 120)
    api.submit("app.latency", 80.5, source="web2", measure_time=now - 120)
    api.submit("app.requests", 100, type="counter", source="web1", measure_time=now - 180)
    api.submit("app.requests", 160, type="counter", source="web1", measure_time=now - 120)
    # Tagged measurements.
    api.submit("app.queue", 7, tags={"host": "worker-1", "region": "eu"}, time=now - 60)
    # A queue: 450 gauges sent in chunks of at most 300 per request.
    q = api.new_queue()
    for i in range(450):
        q.add("app.batch", float(i), source="batch", measure_time=now - 60)
    q.submit()
    print("submitted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
