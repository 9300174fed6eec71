"""A small agent app on ``AgentService.RunTurn``: one call per user message runs the whole turn in the sidecar
(guard -> memory -> gated retrieval -> LLM -> tools -> candidates -> selection -> guard -> memory write),
streaming what happens; a paused turn (tool approval) is resumed after asking the user.

Start the sidecar (``make serve``) and point ``--llm`` at any OpenAI-compatible endpoint (vLLM, llama.cpp
server, Ollama: http://127.0.0.1:11434/v1). ``--stub`` starts the deterministic test LLM instead. Run it with
the interpreter ``make serve`` set up (``.venv/bin/python``; it has the client's packages):

    .venv/bin/python examples/agent_turn.py --stub "Hello!" '[call:echo {"text": "hi"}] echo this please'
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import uuid
from pathlib import Path

from agentrt.v1 import agent_pb2, common_pb2

from runtime.client import AgentrtClient


def show(event: agent_pb2.TurnEvent) -> None:
    kind = event.WhichOneof("event")
    e = getattr(event, kind)
    if kind == "stage" and e.status == agent_pb2.STAGE_STATUS_FINISHED:
        print(f"  [{e.name}] {e.elapsed_ms:.1f} ms")
    elif kind == "guard":
        stage, decision = common_pb2.Stage.Name(e.stage), common_pb2.Decision.Name(e.decision)
        print(f"  guard {stage}: {decision} (harm {e.harm_score:.2f})")
    elif kind == "gate":
        print(f"  gate {common_pb2.Gate.Name(e.gate)}: fire={e.fire} score={e.score:.3f} > {e.threshold:.3f}? "
              f"{e.fallback_reason}")
    elif kind == "retrieval":
        for h in e.hits:
            print(f"  memory {h.score:.3f}: {h.text[:80]}")
    elif kind == "tool_call":
        print(f"  tool call {e.tool_call.name}({e.tool_call.arguments_json})")
    elif kind == "tool_result":
        print(f"  tool result {e.result_json or e.error}")
    elif kind == "candidate":
        print(f"  candidate {e.agent_id}: {e.answer[:80]!r} (mean logprob {e.mean_logprob:.3f})")
    elif kind == "selection":
        print(f"  selected #{e.index} ({e.method}, confidence {e.confidence:.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("messages", nargs="+")
    ap.add_argument("--target", default="127.0.0.1:50051", help="the sidecar")
    ap.add_argument("--token", default=None)
    ap.add_argument("--namespace", default="example-agent")
    ap.add_argument("--thread", default="demo")
    ap.add_argument("--llm", default="http://127.0.0.1:11434/v1", help="OpenAI-compatible base URL")
    ap.add_argument("--model", default="default")
    ap.add_argument("--stub", action="store_true", help="start the deterministic stub LLM from tests/")
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--yes", action="store_true", help="approve paused tool calls without asking")
    args = ap.parse_args()

    stub = None
    if args.stub:
        repo = Path(__file__).resolve().parents[1]
        stub = subprocess.Popen([sys.executable, "-m", "tests.agent.openai_stub"], cwd=repo,
                                stdout=subprocess.PIPE, text=True)
        assert stub.stdout is not None
        args.llm = stub.stdout.readline().strip()
    policy = agent_pb2.TurnPolicy(llm_base_url=args.llm, model=args.model, num_candidates=args.candidates,
                                  tools=["echo", "memory.search"], approval_tools=["memory.write"])
    try:
        with AgentrtClient(args.target, token=args.token, timeout=120) as client:
            for text in args.messages:
                print(f"user: {text}")
                # A turn id of our own: were the call to fail without an answer (deadline, lost connection), the
                # same request sent again would get the finished turn's result instead of running it twice.
                request = agent_pb2.RunTurnRequest(namespace=args.namespace, thread_id=args.thread, message=text,
                                                   policy=policy, turn_id=uuid.uuid4().hex)
                events = client.agent.RunTurn(request, timeout=120)
                while True:
                    result = None
                    for event in events:
                        show(event)
                        if event.WhichOneof("event") == "result":
                            result = event.result
                    assert result is not None
                    if result.status != agent_pb2.TURN_STATUS_INTERRUPTED:
                        print(f"assistant: {result.answer}\n")
                        break
                    pending = result.interrupt
                    what = pending.tool_call.name or pending.text
                    ok = args.yes or input(f"approve {what}? [y/N] ").strip().lower() == "y"
                    decision = common_pb2.DECISION_ALLOW if ok else common_pb2.DECISION_BLOCK
                    events = client.agent.Resume(agent_pb2.ResumeRequest(
                        namespace=args.namespace, thread_id=args.thread, decision=decision), timeout=120)
            thread = client.agent.GetThread(agent_pb2.GetThreadRequest(namespace=args.namespace,
                                                                       thread_id=args.thread))
            print(f"thread {thread.thread_id}: {thread.turns} turns, {len(thread.messages)} messages")
    finally:
        if stub is not None:
            stub.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
