"""Create and list alerts in Kiln with Librato's own Python client (librato-metrics 3.1.0).

Usage: librato_alerts.py HOST:PORT TOKEN CHANNEL_ID
Prints one JSON line: what the client saw (ids, names, conditions as it parsed them).
"""
import json
import sys

import librato
from librato.alerts import Condition


def main() -> int:
    host, token, channel = sys.argv[1], sys.argv[2], int(sys.argv[3])
    api = librato.connect("ops@example.com", token, hostname=host, protocol="http")
    hot = Condition("app.latency", source="web*").above(250, "max")
    hot.duration(300)
    gone = Condition("app.heartbeat").stops_reporting_for(600)
    created = api.create_alert(
        "app.latency.high",
        description="p99 latency above 250 ms",
        conditions=[hot, gone],
        services=[channel],
        attributes={"runbook_url": "https://runbooks.example.com/latency"},
        rearm_seconds=900,
    )
    listed = list(api.list_alerts())
    one = api.get_alert("app.latency.high")
    out = {
        "created_id": created._id,
        "created_name": created.name,
        "listed": [a.name for a in listed],
        "got_id": one._id,
        "conditions": [
            {"type": c.condition_type, "metric": c.metric_name, "source": c.source,
             "threshold": getattr(c, "threshold", None), "duration": c._duration,
             "summary": c.summary_function}
            for c in one.conditions
        ],
        "services": [s._id for s in one.services],
        "rearm": one.rearm_seconds,
        "runbook": one.attributes.get("runbook_url"),
    }
    one.description = "p99 latency above 250 ms (edited)"
    one.save()
    # A slow web server, reported the Librato way: the rule fires on it.
    api.submit("app.latency", 400, source="web1")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
