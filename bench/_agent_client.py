"""The gRPC client of ``bench agent``, in a process of its own as an app's would be (``--client-process``).

Reads one base64 ``RunTurnRequest`` per stdin line, runs it, and answers one JSON line: the call's
``time.perf_counter()`` bounds (CLOCK_MONOTONIC: comparable with the sidecar's, which runs on the same host) and
the streamed events, base64. In the sidecar's own process, the client's per-event work (and the thread the sync
gRPC client starts per streaming call) would hold the sidecar's interpreter lock while its turn runs.
"""

from __future__ import annotations

import base64
import json
import sys
import time

from agentrt.v1 import agent_pb2

from runtime.client import AgentrtClient


def main() -> int:
    client = AgentrtClient(sys.argv[1], timeout=60)
    for line in sys.stdin:
        request = agent_pb2.RunTurnRequest.FromString(base64.b64decode(line))
        t0 = time.perf_counter()
        events = list(client.agent.RunTurn(request, timeout=60))
        t1 = time.perf_counter()
        out = {"t0": t0, "t1": t1, "events": [base64.b64encode(e.SerializeToString()).decode() for e in events]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
