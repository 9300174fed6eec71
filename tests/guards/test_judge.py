"""The optional LLM judge: consulted on REVIEW only when a namespace opts in; failures keep REVIEW."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from guards.judge import JudgeConfig, LLMJudge
from guards.model import Decision, GuardRequest, Stage, ToolCallInfo
from tests.agent.openai_stub import OpenAIStub


@pytest.fixture
def llm() -> Iterator[OpenAIStub]:
    """The project's OpenAI-compatible stub: model "fixed:<text>" answers exactly <text>."""
    with OpenAIStub() as stub:
        yield stub


REVIEW_RULE = "rules: [{name: refunds, action: review, tools: [issue_refund]}]"
REQ = GuardRequest(Stage.TOOL_CALL, "refund the order", ToolCallInfo("issue_refund", '{"order": "A1"}'))


def test_judge_decides_review_when_enabled(hashing_engine, llm) -> None:
    judge = LLMJudge(JudgeConfig(base_url=llm.base_url, model="fixed:BLOCK"))
    engine = hashing_engine(judge=judge, defaults={"pack": False})
    engine.put_rules("t/j", REVIEW_RULE)
    # The namespace has not opted in: no request reaches the endpoint.
    assert engine.check("t/j", REQ).decision == Decision.REVIEW and llm.requests == []
    engine.put_settings("t/j", {"judge": True})
    v = engine.check("t/j", REQ)
    assert v.decision == Decision.BLOCK and v.decided_by == "judge" and v.evidence[0].kind == "judge"
    asked = llm.requests[0]
    assert asked["model"] == "fixed:BLOCK" and "issue_refund" in asked["messages"][1]["content"]


def test_judge_failure_keeps_review(hashing_engine) -> None:
    judge = LLMJudge(JudgeConfig(base_url="http://127.0.0.1:9", model="m", timeout_s=0.5))
    engine = hashing_engine(judge=judge, defaults={"pack": False, "judge": True})
    engine.put_rules("t/j", REVIEW_RULE)
    assert engine.check("t/j", REQ).decision == Decision.REVIEW
