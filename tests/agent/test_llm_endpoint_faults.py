"""A misbehaving OpenAI-compatible endpoint: every way it fails gives a clear error naming it, or a fallback.

``FaultyLLM`` is a real HTTP server whose behaviour is chosen by the request's ``model`` (so the candidates of one
turn, which differ by model, can misbehave differently on one endpoint). The parser is tested on its own where a
table of bodies reads better; the client over real HTTP; whole turns over the wire through the generated stubs,
after which nothing of a failed turn is in memory and its thread takes the next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from agentrt.v1 import agent_pb2

from core.errors import DeadlineExceededError, FailedPreconditionError, InvalidArgumentError
from runtime.agent.llm import MAX_ANSWER_CHARS, MAX_BODY_BYTES, ChatClient, parse_completion
from runtime.agent.policy import TurnPolicy
from runtime.agent.ports import AllowAllGuard
from tests.agent.conftest import of, turn

NS = "llm-faults"
URL = "http://llm.test/v1/chat/completions"


def _tokens(text: str, lp: float = -0.01, alt: float = -5.0) -> list[dict[str, Any]]:
    words = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
    return [{"token": w, "logprob": lp, "top_logprobs": [{"token": w, "logprob": lp}, {"token": "x", "logprob": alt}]}
            for w in words]


def _completion(content: Any, logprobs: Any = "tokens", tool_calls: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
    if logprobs == "tokens":
        choice["logprobs"] = {"content": _tokens(content if isinstance(content, str) else "x")}
    elif logprobs != "missing":
        choice["logprobs"] = logprobs
    return {"id": "c", "object": "chat.completion", "model": "m", "choices": [choice]}


#: Bodies that are JSON but not a chat completion, by name (``model="body:<name>"``).
MALFORMED = {
    "choices-dict": {"choices": {"0": _completion("a")["choices"][0]}},
    "choice-null": {"choices": [None]},
    "body-list": [_completion("a")],
    "body-null": None,
    "token-null": _completion("a", logprobs={"content": [None]}),
    "logprobs-content-string": _completion("a", logprobs={"content": "abc"}),
    "logprob-null": _completion("a b", logprobs={"content": _tokens("a b", None)}),  # type: ignore[arg-type]
    "tool-call-string": _completion(None, logprobs="missing", tool_calls=["oops"]),
    "content-number": _completion(42, logprobs="missing"),
    "content-part-image": _completion([{"type": "image_url", "image_url": {"url": "x"}}], logprobs="missing"),
    "no-choices": {"id": "x", "object": "chat.completion"},
}
#: What each malformed body's error says was wrong.
MALFORMED_WHAT = {
    "choices-dict": "choices is a dict", "choice-null": "choices[0] is a null", "body-list": "body is a JSON list",
    "body-null": "body is a JSON null", "token-null": "logprobs.content[0] is a null",
    "logprobs-content-string": "logprobs.content is a str", "logprob-null": "numeric logprob",
    "tool-call-string": "tool_calls[0] is a str", "content-number": "message.content is a int",
    "content-part-image": "message.content[0] is not a text part", "no-choices": "returned no choices",
}


class FaultyLLM:
    """Serves ``POST /v1/chat/completions``; the request's model picks the behaviour:

    ``ok`` (answers ``"ok: <user message>"`` with confident logprobs), ``body:<name>`` (a ``MALFORMED`` body),
    ``lp:<nan|neginf|pos|alt-neginf>`` (that logprob on every token, or on the alternatives only),
    ``parts`` (content as a list of text parts), ``status:<code>``, ``slow:<s>``, ``trickle`` (the body one byte
    every 0.2 s), ``redirect:<code>`` (to ``redirect_to``, with a completion as the body), ``non-json``,
    ``non-utf8``, ``long:<chars>`` (an answer that long), ``huge`` (a body past the cap, with Content-Length) and
    ``huge-chunked`` (the same without it).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.redirect_to = ""
        llm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                llm.requests.append(body)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    llm.answer(self, body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None,
              chunked: bool = False) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not chunked:
            h.wfile.write(data)
            return
        for at in range(0, len(data), 1 << 16):
            piece = data[at:at + (1 << 16)]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    def answer(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = str(body.get("model", "ok"))
        kind, _, arg = model.partition(":")
        users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
        ok = _completion(f"ok: {users[-1]['content'] if users else ''}")
        if kind == "body":
            return self._send(h, 200, json.dumps(MALFORMED[arg]).encode())
        if kind == "lp":
            text = f"{arg} answer"
            lp, alt = {"nan": (math.nan, -5.0), "neginf": (-math.inf, -5.0), "pos": (0.5, -5.0),
                       "alt-neginf": (-0.01, -math.inf), "alt-tiny": (-0.01, -1e30), "tiny": (-1e30, -5.0)}[arg]
            return self._send(h, 200, json.dumps(_completion(text, {"content": _tokens(text, lp, alt)})).encode())
        if kind == "parts":
            parts = [{"type": "text", "text": "part one,"}, {"type": "text", "text": " part two"}]
            return self._send(h, 200, json.dumps(_completion(parts, logprobs="missing")).encode())
        if kind == "status":
            return self._send(h, int(arg), json.dumps({"error": {"message": f"status {arg}"}}).encode())
        if kind == "slow":
            time.sleep(float(arg))
            return self._send(h, 200, json.dumps(ok).encode())
        if kind == "trickle":
            data = json.dumps(ok).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            for b in data:
                h.wfile.write(bytes([b]))
                h.wfile.flush()
                time.sleep(0.2)
            return None
        if kind == "redirect":
            return self._send(h, int(arg), json.dumps(ok).encode(), {"Location": self.redirect_to})
        if kind == "non-json":
            return self._send(h, 200, b"<html>hello</html>")
        if kind == "non-utf8":
            return self._send(h, 200, b'{"choices": [{"message": {"content": "\xff\xfe bad"}}]}')
        if kind == "deep-json":  # nested past Python's parser stack
            return self._send(h, 200, b"[" * 100_000 + b"]" * 100_000)
        if kind == "long":
            return self._send(h, 200, json.dumps(_completion("L" * int(arg), logprobs="missing")).encode())
        if kind in ("huge", "huge-chunked"):
            data = json.dumps(_completion("H" * (MAX_BODY_BYTES + 1000), logprobs="missing")).encode()
            return self._send(h, 200, data, chunked=kind == "huge-chunked")
        return self._send(h, 200, json.dumps(ok).encode())


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyLLM]:
    llm = FaultyLLM()
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[FaultyLLM]:
    """A second endpoint, where redirects point."""
    llm = FaultyLLM()
    yield llm
    llm.close()


def _complete(llm: FaultyLLM, model: str, timeout_s: float | None = None) -> Any:
    async def go() -> Any:
        client = ChatClient(llm.base_url)
        try:
            return await client.complete([{"role": "user", "content": "hi"}], model=model, timeout_s=timeout_s)
        finally:
            await client.aclose()

    return asyncio.run(go())


# ------------------------------------------------------------------------------------------------
# parse_completion


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_body_is_failed_precondition_naming_the_endpoint_and_the_fault(name) -> None:
    with pytest.raises(FailedPreconditionError) as err:
        parse_completion(MALFORMED[name], URL)
    assert URL in str(err.value) and MALFORMED_WHAT[name] in str(err.value)


def test_content_parts_are_joined_as_text() -> None:
    body = _completion([{"type": "text", "text": "a, "}, {"text": "b"}], logprobs="missing")
    assert parse_completion(body, URL).text == "a, b"


@pytest.mark.parametrize("lp, alt", [(math.nan, -5.0), (-0.01, math.nan), (math.inf, -5.0), (-math.inf, -5.0),
                                     (0.5, -5.0), (-0.01, 0.5)])
def test_logprobs_that_are_not_log_probabilities_count_as_none(lp, alt, caplog) -> None:
    body = _completion("a b", {"content": _tokens("a b", lp, alt)})
    c = parse_completion(body, URL)
    assert (c.text, c.tokens, c.has_logprobs) == ("a b", (), False)
    assert any(URL in r.getMessage() and "unusable logprobs" in r.getMessage() for r in caplog.records)


def test_impossible_alternatives_are_left_out_and_rounding_reads_as_zero() -> None:
    body = _completion("a", {"content": [{"token": "a", "logprob": 1e-6, "top_logprobs": [
        {"token": "a", "logprob": 1e-6}, {"token": "b", "logprob": -math.inf}, {"token": "c", "logprob": -9.0}]}]})
    c = parse_completion(body, URL)
    assert c.has_logprobs and c.tokens[0].logprob == 0.0
    assert c.tokens[0].top_logprobs == (("a", 0.0), ("c", -9.0))


def test_an_answer_longer_than_memory_keeps_is_refused() -> None:
    from memory.engine import MAX_TEXT_CHARS

    assert MAX_ANSWER_CHARS == MAX_TEXT_CHARS  # the limit is memory's: a longer answer fails its write
    assert parse_completion(_completion("x" * MAX_ANSWER_CHARS, "missing"), URL).text
    with pytest.raises(FailedPreconditionError, match=f"{URL} answered {MAX_ANSWER_CHARS + 1} characters"):
        parse_completion(_completion("x" * (MAX_ANSWER_CHARS + 1), "missing"), URL)


# ------------------------------------------------------------------------------------------------
# ChatClient over real HTTP


def test_llm_timeout_bounds_the_whole_call_even_when_bytes_trickle_in(faulty) -> None:
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError, match=f"{faulty.base_url}/chat/completions timed out"):
        _complete(faulty, "trickle", timeout_s=1.0)
    assert time.monotonic() - t0 < 5.0  # the whole body would take a minute


@pytest.mark.parametrize("code", [302, 307])
def test_a_redirect_is_an_error_naming_status_and_location_and_is_not_followed(faulty, elsewhere, code) -> None:
    faulty.redirect_to = f"{elsewhere.base_url}/chat/completions"
    before = len(elsewhere.requests)
    with pytest.raises(FailedPreconditionError) as err:
        _complete(faulty, f"redirect:{code}")
    assert f"({code}, Location: {faulty.redirect_to})" in str(err.value) and faulty.base_url in str(err.value)
    assert len(elsewhere.requests) == before


@pytest.mark.parametrize("model, what", [("non-json", "non-JSON"), ("non-utf8", "not UTF-8"),
                                         ("deep-json", "nested too deeply")])
def test_a_200_body_that_is_not_utf8_json_is_failed_precondition(faulty, model, what) -> None:
    with pytest.raises(FailedPreconditionError, match=what) as err:
        _complete(faulty, model)
    assert faulty.base_url in str(err.value)


@pytest.mark.parametrize("model", ["huge", "huge-chunked"])
def test_a_body_past_the_cap_is_refused_without_reading_it_all(faulty, model) -> None:
    with pytest.raises(FailedPreconditionError, match=f"more than {MAX_BODY_BYTES} bytes") as err:
        _complete(faulty, model)
    assert faulty.base_url in str(err.value)


def test_a_candidate_base_url_is_validated_with_the_policy() -> None:
    ok = TurnPolicy(llm_base_url="http://x/v1", candidates=({"base_url": "https://y/v1"}, {}))
    assert ok.validate() is ok
    for bad in ("ftp://x/v1", 42):
        with pytest.raises(InvalidArgumentError) as err:
            TurnPolicy(llm_base_url="http://x/v1", candidates=({}, {"base_url": bad})).validate()
        assert err.value.violations[0].field == "policy.candidates[1].base_url"


# ------------------------------------------------------------------------------------------------
# Whole turns over the wire


@pytest.fixture
def srv(shared_server):
    """The module's server with an allow-all guard; gates, selection and memory are the real engines."""
    shared_server.rt.extras["agent_ports"] = {"guard": lambda rt, scope: AllowAllGuard()}
    yield shared_server
    shared_server.rt.extras.pop("agent_ports", None)


def _failed_turn(srv: Any, thread: str, message: str, timeout: float = 30, **policy: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        turn(srv.client, NS, thread, message, timeout=timeout, **policy)
    return err.value


def _left_nothing_behind(srv: Any, thread: str, word: str, llm: FaultyLLM) -> None:
    """Nothing of the failed turn is in memory, and its thread takes the next turn."""
    assert not [h.text for h in srv.client.search(NS, word, top_k=20).hits if word in h.text]
    events = turn(srv.client, NS, thread, "next one", llm_base_url=llm.base_url, model="ok")
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED
    view = srv.client.agent.GetThread(agent_pb2.GetThreadRequest(namespace=NS, thread_id=thread), timeout=10)
    assert view.turns == 1


@pytest.mark.parametrize("name", ["choices-dict", "body-null", "token-null", "tool-call-string", "content-number"])
def test_a_malformed_answer_fails_the_turn_naming_the_endpoint(srv, faulty, name) -> None:
    word = "malformed" + name.replace("-", "")
    err = _failed_turn(srv, f"bad-{name}", f"probe {word}", llm_base_url=faulty.base_url, model=f"body:{name}")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert faulty.base_url in (err.details() or "") and MALFORMED_WHAT[name] in (err.details() or "")
    _left_nothing_behind(srv, f"bad-{name}", word, faulty)


def test_content_parts_make_the_answer(srv, faulty) -> None:
    events = turn(srv.client, NS, "parts", "parts please", llm_base_url=faulty.base_url, model="parts")
    assert of(events, "result")[0].answer == "part one, part two"


@pytest.mark.parametrize("kind", ["nan", "neginf", "pos"])
def test_unusable_logprobs_make_the_gates_fall_back_as_without_logprobs(srv, faulty, kind) -> None:
    events = turn(srv.client, NS, f"lp-{kind}", f"lp probe {kind}", llm_base_url=faulty.base_url, model=f"lp:{kind}",
                  num_candidates=2)
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_COMPLETED and result.answer == f"{kind} answer"
    gates = of(events, "gate")
    assert gates and all(g.fire and "no logprobs" in g.fallback_reason for g in gates)
    assert [c.num_tokens for c in of(events, "candidate")] == [0, 0]
    assert of(events, "memory_write")


def test_impossible_alternatives_do_not_stop_the_gates(srv, faulty) -> None:
    events = turn(srv.client, NS, "lp-alt", "alt probe", llm_base_url=faulty.base_url, model="lp:alt-neginf")
    [gate] = of(events, "gate")
    assert not gate.fallback_reason and not gate.fire  # confident tokens, read from their logprobs
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED


@pytest.mark.parametrize("kind", ["alt-tiny", "tiny"])
def test_logprobs_past_the_gates_floor_are_read_as_probability_zero(srv, faulty, kind) -> None:
    # Some servers mark probability 0 with -1e30 (or float32's lowest) instead of -inf. The gates refuse
    # logprobs below MIN_LOGPROB from a client; from the turn's own LLM they must not fail the turn.
    events = turn(srv.client, NS, f"lp-{kind}", f"floor probe {kind}", llm_base_url=faulty.base_url, model=f"lp:{kind}")
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED
    [gate] = of(events, "gate")
    assert not gate.fallback_reason  # read from the logprobs, not the no-logprobs default


def test_a_parsed_answer_keeps_within_what_the_gates_take() -> None:
    from runtime.gates.types import MAX_TOP_LOGPROBS, MIN_LOGPROB

    alternatives = [{"token": f"t{i}", "logprob": -0.01 * i} for i in range(150)] + [{"token": "z", "logprob": -1e30}]
    body = _completion("a", {"content": [{"token": "a", "logprob": -1e30, "top_logprobs": alternatives}]})
    [token] = parse_completion(body, URL).tokens
    assert token.logprob == MIN_LOGPROB
    assert len(token.top_logprobs) == MAX_TOP_LOGPROBS and token.top_logprobs[0] == ("t0", 0.0)


def test_a_trickling_endpoint_fails_the_turn_at_llm_timeout_naming_it(srv, faulty) -> None:
    t0 = time.monotonic()
    err = _failed_turn(srv, "trickle", "probe trickleword", timeout=10, llm_base_url=faulty.base_url, model="trickle",
                       llm_timeout_s=1.0)
    assert time.monotonic() - t0 < 6.0
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"{faulty.base_url}/chat/completions timed out" in (err.details() or "")
    _left_nothing_behind(srv, "trickle", "trickleword", faulty)


def test_a_slow_endpoint_fails_the_turn_naming_it(srv, faulty) -> None:
    err = _failed_turn(srv, "slow", "probe slowword", llm_base_url=faulty.base_url, model="slow:5",
                       llm_timeout_s=1.0)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"{faulty.base_url}/chat/completions timed out" in (err.details() or "")
    _left_nothing_behind(srv, "slow", "slowword", faulty)


def test_an_overlong_answer_is_refused_before_any_later_stage(srv, faulty) -> None:
    err = _failed_turn(srv, "long", "probe longword", llm_base_url=faulty.base_url,
                       model=f"long:{MAX_ANSWER_CHARS + 10}")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{faulty.base_url}/chat/completions answered {MAX_ANSWER_CHARS + 10} characters" in (err.details() or "")
    _left_nothing_behind(srv, "long", "longword", faulty)


def test_a_redirecting_endpoint_fails_the_turn_naming_status_and_location(srv, faulty, elsewhere) -> None:
    faulty.redirect_to = f"{elsewhere.base_url}/chat/completions"
    err = _failed_turn(srv, "redirect", "probe redirectword", llm_base_url=faulty.base_url, model="redirect:302")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"(302, Location: {faulty.redirect_to})" in (err.details() or "")
    _left_nothing_behind(srv, "redirect", "redirectword", faulty)


@pytest.mark.parametrize("bad", ["status:500", "slow:10", "body:choice-null", "lp:nan"])
def test_a_failing_extra_candidate_is_left_out(srv, faulty, bad) -> None:
    cands = [agent_pb2.CandidateSpec(agent_id="a0"), agent_pb2.CandidateSpec(agent_id="bad", model=bad),
             agent_pb2.CandidateSpec(agent_id="a2", model="ok")]
    t0 = time.monotonic()
    events = turn(srv.client, NS, f"cands-{bad}", "three of us", llm_base_url=faulty.base_url, model="ok",
                  candidates=cands, llm_timeout_s=1.0, timeout=20)
    assert time.monotonic() - t0 < 6.0
    [result] = of(events, "result")
    assert result.status == agent_pb2.TURN_STATUS_COMPLETED and result.answer == "ok: three of us"
    answered = [(c.index, c.agent_id) for c in of(events, "candidate") if not c.error]
    left_out = [(c.index, c.agent_id, c.answer) for c in of(events, "candidate") if c.error]
    if bad == "lp:nan":  # it answered, without usable logprobs: kept, and selection falls back
        assert answered == [(0, "a0"), (1, "bad"), (2, "a2")] and not left_out
    else:
        assert answered == [(0, "a0"), (1, "a2")] and left_out == [(-1, "bad", "")]
        # The stream says why, naming the endpoint; answered candidates come first.
        assert faulty.base_url in of(events, "candidate")[-1].error
    [sel] = of(events, "selection")
    assert of(events, "candidate")[sel.index].answer == result.answer
    assert of(events, "memory_write")


def test_the_same_fault_in_candidate_zero_still_fails_the_turn(srv, faulty) -> None:
    extra_fails = [agent_pb2.CandidateSpec(agent_id="a0"), agent_pb2.CandidateSpec(agent_id="a1", model="status:500")]
    events = turn(srv.client, NS, "cand0", "probe candzeroword", llm_base_url=faulty.base_url, model="ok",
                  candidates=extra_fails)
    assert [(c.agent_id, bool(c.error)) for c in of(events, "candidate")] == [("a0", False), ("a1", True)]
    zero_fails = [agent_pb2.CandidateSpec(agent_id="a0"), agent_pb2.CandidateSpec(agent_id="a1", model="ok")]
    err = _failed_turn(srv, "cand0-fails", "probe candzerofails", llm_base_url=faulty.base_url, model="status:500",
                       candidates=zero_fails)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and faulty.base_url in (err.details() or "")
    _left_nothing_behind(srv, "cand0-fails", "candzerofails", faulty)


def test_candidate_endpoints_from_the_namespace_policy(make_server, faulty) -> None:
    refused = "http://127.0.0.1:9/v1"
    server = make_server(embedding_model="hashing", policies={"namespaces": {
        "down": {"agent": {"llm_base_url": faulty.base_url, "model": "ok", "candidates": [
            {"agent_id": "a0"}, {"agent_id": "a1", "base_url": refused}, {"agent_id": "a2"}]}},
    }})
    server.rt.extras["agent_ports"] = {"guard": lambda rt, scope: AllowAllGuard()}
    events = turn(server.client, "down", "t", "who answers")
    assert [(c.index, c.agent_id) for c in of(events, "candidate")] == [(0, "a0"), (1, "a2"), (-1, "a1")]
    assert refused in of(events, "candidate")[-1].error
    assert of(events, "result")[0].status == agent_pb2.TURN_STATUS_COMPLETED
    # A malformed candidate URL in the configuration fails the start instead (test_turn_requests.py).
