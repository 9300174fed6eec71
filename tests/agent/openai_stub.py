"""A local OpenAI-compatible chat-completions server for tests and benchmarks: real HTTP, deterministic.

Behaviour is steered by markers in the last user message or in the system prompt (which keeps a benchmark's
user message a plain question), so tests read as the scenario they run:

- ``[call:<tool> <json args>]`` in the last user message (several allowed): the first completion with
  tools offered asks for those tool calls; once tool results are in the conversation, it answers from them.
- ``[unsure]`` in the user message: every answer token carries a flat top-5 distribution (high entropy),
  so the retrieval gate fires; otherwise tokens are confident (logprob -0.01, peaked alternatives).
- ``[slow:<seconds>]``: the server sleeps before answering (cancellation and deadline tests).
- model ``"no-logprobs"``: answers without a ``logprobs`` field.
- model ``"broken"``: answers HTTP 500.
- model ``"fixed:<text>"``: answers exactly ``<text>`` (a structured answer, e.g. JSON, for callers that parse it).
- model ``"always-tools"``: asks for the ``[call:...]`` tool calls in every completion, whether or not tools are
  offered and after their results too (an LLM that ignores the protocol, or one an injection talked into a tool).

The answer text is ``"<model>: <reply>"`` where reply echoes the user message, a tool result
(``tool says <content>``) or, when the system prompt carries retrieved memories, ``remembers <first memory>``.
Every request body is recorded in ``requests`` (and its Authorization header in ``authorizations``).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_CALL = re.compile(r"\[call:(\w+)\s+(\{.*?\})\]")
_SLOW = re.compile(r"\[slow:([0-9.]+)\]")
# Steering markers are not echoed; any other bracketed text is.
_MARKERS = re.compile(r"\s*\[(?:call:[^\]]*|slow:[^\]]*|unsure)\]")


def _tokens(text: str, unsure: bool, temperature: float, k: int) -> list[dict[str, Any]]:
    out = []
    for i, word in enumerate(text.split(" ")):
        tok = word if i == 0 else " " + word
        if unsure:
            # Flat over k alternatives: normalised entropy ~1.
            lp = math.log(1.0 / max(k, 1))
            top = [{"token": tok if j == 0 else f"alt{j}", "logprob": lp} for j in range(k)]
        else:
            # Confident, a little less so at higher temperature: candidates get different confidences.
            lp = -0.01 - 0.05 * temperature
            rest = math.log(max(1e-9, (1 - math.exp(lp)) / max(k - 1, 1)))
            top = [{"token": tok, "logprob": lp}] + [{"token": f"alt{j}", "logprob": rest} for j in range(1, k)]
        out.append({"token": tok, "logprob": lp, "top_logprobs": top[:k]})
    return out


def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The deterministic reply to one chat-completions request body."""
    model = str(body.get("model", "stub"))
    if model == "broken":
        return 500, {"error": {"message": "stub model is broken"}}
    messages = body.get("messages") or []
    users = [m for m in messages if m.get("role") == "user"]
    user = str(users[-1].get("content", "")) if users else ""
    last_user_at = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    tool_msgs = [m for m in messages[last_user_at + 1 :] if m.get("role") == "tool"]
    system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
    # The prompt's own text, not the memories appended to it (they may quote earlier turns' markers).
    steer = f"{user} {system.split('Memories:', 1)[0]}"
    if slow := _SLOW.search(steer):
        time.sleep(float(slow.group(1)))
    message: dict[str, Any] = {"role": "assistant", "content": None}
    calls = _CALL.findall(steer)
    if calls and ((body.get("tools") and not tool_msgs) or model == "always-tools"):
        message["tool_calls"] = [{
            "id": f"call_{len(messages)}_{i}",
            "type": "function",
            "function": {"name": name, "arguments": args},
        } for i, (name, args) in enumerate(calls)]
        content = "calling " + ", ".join(name for name, _ in calls)
        finish = "tool_calls"
    else:
        if tool_msgs:
            reply = "tool says " + " and ".join(str(m.get("content", "")) for m in tool_msgs)
        elif "Memories:" in system:
            first = system.split("Memories:", 1)[1].strip().split("\n")[0].lstrip("- ").strip()
            reply = f"remembers {first}"
        else:
            reply = _MARKERS.sub("", user).strip()
        content = model.removeprefix("fixed:") if model.startswith("fixed:") else f"{model}: {reply}"
        message["content"] = content
        finish = "stop"
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    if model != "no-logprobs" and body.get("logprobs"):
        k = int(body.get("top_logprobs") or 0) or 1
        choice["logprobs"] = {"content": _tokens(content, "[unsure]" in steer, float(body.get("temperature") or 0), k)}
    return 200, {"id": "chatcmpl-stub", "object": "chat.completion", "model": model, "choices": [choice]}


class OpenAIStub:
    """Serves ``POST /v1/chat/completions`` on 127.0.0.1:<port> from a background thread."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        # The Authorization header of each recorded request (None when absent), in the order of ``requests``.
        self.authorizations: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without this, Nagle + delayed ACK add ~40 ms a call.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    status, reply = 404, {"error": {"message": f"no route {self.path}"}}
                else:
                    stub.requests.append(body)
                    stub.authorizations.append(self.headers.get("Authorization"))
                    status, reply = respond(body)
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (cancelled turn, deadline): nothing to answer

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()


def main() -> None:
    """Serve until killed; prints the base URL on the first line (used by ``bench agent``)."""
    stub = OpenAIStub()
    print(stub.base_url, flush=True)
    stub._httpd.serve_forever()


if __name__ == "__main__":
    main()
