"""A LangGraph app whose long-term store is the agentrt sidecar: ``StateGraph.compile(store=SidecarStore(...))``.

Nodes receive the store as LangGraph injects it and use the ordinary ``BaseStore`` API; every batch of
operations is one ``AgentService.StoreBatch`` RPC, items are persisted in the sidecar's database, and
``search(query=...)`` is ranked by the sidecar's embedder.

    make serve   # in another terminal
    .venv/bin/python examples/langgraph_store.py   # the interpreter make serve set up (it has langgraph)
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from runtime.store import SidecarStore


class State(TypedDict, total=False):
    user_id: str
    message: str
    recalled: list[str]
    reply: str


def remember(state: State, runtime: Runtime) -> State:
    """Store what the user said, under the user's own namespace."""
    store = runtime.store
    assert store is not None
    store.put(("users", state["user_id"], "notes"), uuid.uuid4().hex, {"text": state["message"]})
    return {}


def recall(state: State, runtime: Runtime) -> State:
    """Find the user's notes closest in meaning to the message."""
    store = runtime.store
    assert store is not None
    hits = store.search(("users", state["user_id"], "notes"), query=state["message"], limit=3)
    return {"recalled": [f"{h.value['text']} ({h.score:.2f})" for h in hits]}


def answer(state: State) -> State:
    return {"reply": "I remember: " + "; ".join(state.get("recalled", []))}


def build(store: SidecarStore):
    g = StateGraph(State)
    g.add_node("remember", remember)
    g.add_node("recall", recall)
    g.add_node("answer", answer)
    g.add_edge(START, "remember")
    g.add_edge("remember", "recall")
    g.add_edge("recall", "answer")
    g.add_edge("answer", END)
    return g.compile(store=store)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--namespace", default="example-store")
    ap.add_argument("--user", default="ada")
    args = ap.parse_args()
    store = SidecarStore(args.target, namespace=args.namespace, index={"fields": ["text"]})
    graph = build(store)
    for message in ("My favourite language is Python.", "I have a dog called Pixel.",
                    "Which pet do I have?"):
        out = graph.invoke({"user_id": args.user, "message": message})
        print(f"user: {message}\n  -> {out['reply']}")
    print("namespaces:", store.list_namespaces(prefix=("users",)))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
