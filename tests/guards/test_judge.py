"""The optional LLM judge: consulted on REVIEW only when a namespace opts in; failures keep REVIEW."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from guards.judge import JudgeConfig, LLMJudge
from guards.model import Decision, GuardRequest, Stage, ToolCallInfo

ASKED: list[dict] = []


class _Fake(BaseHTTPRequestHandler):
    answer = "BLOCK"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ASKED.append(body)
        out = json.dumps({"choices": [{"message": {"content": self.answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    ASKED.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


REVIEW_RULE = "rules: [{name: refunds, action: review, tools: [issue_refund]}]"
REQ = GuardRequest(Stage.TOOL_CALL, "refund the order", ToolCallInfo("issue_refund", '{"order": "A1"}'))


def test_judge_decides_review_when_enabled(hashing_engine, endpoint) -> None:
    engine = hashing_engine(judge=LLMJudge(JudgeConfig(base_url=endpoint, model="m")), defaults={"pack": False})
    engine.put_rules("t/j", REVIEW_RULE)
    assert engine.check("t/j", REQ).decision == Decision.REVIEW and ASKED == []  # namespace has not opted in
    engine.put_settings("t/j", {"judge": True})
    v = engine.check("t/j", REQ)
    assert v.decision == Decision.BLOCK and v.decided_by == "judge" and v.evidence[0].kind == "judge"
    assert ASKED[0]["model"] == "m" and "issue_refund" in ASKED[0]["messages"][1]["content"]


def test_judge_failure_keeps_review(hashing_engine) -> None:
    judge = LLMJudge(JudgeConfig(base_url="http://127.0.0.1:9", model="m", timeout_s=0.5))
    engine = hashing_engine(judge=judge, defaults={"pack": False, "judge": True})
    engine.put_rules("t/j", REVIEW_RULE)
    assert engine.check("t/j", REQ).decision == Decision.REVIEW
