"""Unit derivation (memory/units.py): granularities, covering rule, weights, determinism."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx

from memory.model import Granularity, MemoryMessage
from memory.units import OpenAICompatibleEnricher, UnitPolicy, derive_units, information_weight, speaker_of

WHEN = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
TEXTS = [
    ("Caroline", "I went to an LGBTQ support group yesterday and it was so powerful."),
    ("Melanie", "Wow, that's cool! What happened at the support group?"),
    ("Caroline", "The transgender stories were inspiring. I want to study counseling and psychology."),
    ("Melanie", "haha ok"),
    ("Melanie", "I painted a sunrise over Lake Tahoe last year with my kids."),
    ("Caroline", "Your painting of Lake Tahoe sounds beautiful, Melanie!"),
]


def messages() -> list[MemoryMessage]:
    return [MemoryMessage(f"D1:{i + 1}", "s1", spk, text, WHEN) for i, (spk, text) in enumerate(TEXTS)]


def words(text: str) -> list[str]:
    return text.split()


def test_every_unit_contains_the_words_of_the_messages_it_covers() -> None:
    msgs = {m.id: m for m in messages()}
    units = derive_units("s1", list(msgs.values()))
    assert {u.granularity for u in units} == set(Granularity)
    for unit in units:
        assert unit.message_ids, unit
        assert unit.session_id == "s1"
        assert unit.time_start == WHEN and unit.time_end == WHEN
        for mid in unit.message_ids:
            assert msgs[mid].text in unit.text, (unit.granularity, mid)


def test_turns_windows_and_ids_are_deterministic() -> None:
    a = derive_units("s1", messages())
    b = derive_units("s1", messages())
    assert [u.id for u in a] == [u.id for u in b]
    assert len({u.id for u in a}) == len(a)
    assert all(u.id.startswith("s1/") for u in a)
    turns = [u for u in a if u.granularity == Granularity.TURN]
    assert [u.message_ids for u in turns] == [(m.id,) for m in messages()]
    assert turns[0].text.startswith("Caroline: ")
    assert speaker_of(turns[0].text) == "Caroline"
    windows = [u for u in a if u.granularity == Granularity.EXCHANGE]
    # One window centred on each turn, in conversation order.
    assert windows[0].message_ids == ("D1:1", "D1:2")
    assert windows[2].message_ids == ("D1:2", "D1:3", "D1:4")
    assert len(windows) == len(TEXTS)


def test_low_information_turns_are_kept_but_down_weighted() -> None:
    units = {u.message_ids[0]: u for u in derive_units("s1", messages()) if u.granularity == Granularity.TURN}
    assert units["D1:4"].weight < 0.6  # "haha ok"
    assert units["D1:1"].weight == 1.0
    assert information_weight("ok") == UnitPolicy().low_info_weight


def test_session_digest_and_facts_name_the_topics() -> None:
    units = derive_units("s1", messages())
    digest = next(u for u in units if u.granularity == Granularity.SESSION)
    assert "8 May 2023" in digest.text
    assert len(digest.message_ids) == UnitPolicy().digest_turns
    facts = [u for u in units if u.granularity == Granularity.FACT]
    labels = " ".join(f.text.split(":\n", 1)[0] for f in facts)
    assert "Lake Tahoe" in labels
    lake = next(f for f in facts if f.text.startswith("Lake Tahoe"))
    assert lake.message_ids == ("D1:5", "D1:6")


def test_single_message_and_empty_sessions() -> None:
    assert derive_units("s2", []) == []
    one = derive_units("s2", [MemoryMessage("m1", "s2", "", "hello there friend")])
    assert [u.granularity for u in one].count(Granularity.TURN) == 1
    assert all(u.granularity != Granularity.EXCHANGE for u in one)
    assert one[0].text == "hello there friend" and one[0].time_start is None


def test_policy_from_mapping_reads_units_section() -> None:
    policy = UnitPolicy.from_mapping({"units": {"window": 5, "max_facts": 2, "unknown": 1}})
    assert policy.window == 5 and policy.max_facts == 2
    units = derive_units("s1", messages(), policy)
    assert max(len(u.message_ids) for u in units if u.granularity == Granularity.EXCHANGE) == 5
    assert sum(u.granularity == Granularity.FACT for u in units) <= 2


def test_llm_enrichment_hook_quotes_turns_and_survives_failure() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["model"] == "m"
        content = '{"facts": [{"label": "Caroline studies counseling", "turns": [0, 2, 99]}]}'
        return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    enricher = OpenAICompatibleEnricher("http://llm.local/v1", "m", client=client)
    units = derive_units("s1", messages(), enricher=enricher)
    llm = [u for u in units if "/llmfact/" in u.id]
    assert len(llm) == 1 and llm[0].message_ids == ("D1:1", "D1:3")
    assert TEXTS[2][1] in llm[0].text

    failing = OpenAICompatibleEnricher(
        "http://llm.local/v1", "m", client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    )
    assert len(derive_units("s1", messages(), enricher=failing)) == len(derive_units("s1", messages()))


def test_unit_id_parts_are_one_to_one_and_bounded() -> None:
    from memory.units import ID_PART_CHARS, id_part, turn_unit_id

    assert id_part("conv-26") == "conv-26"  # ordinary ids read as they are
    assert turn_unit_id("a", "b/turn/c") != turn_unit_id("a/turn/b", "c")
    assert len({id_part(x) for x in ("a/b", "a%2Fb", "a%252Fb", "%h" + "0" * 32)}) == 4
    long = "x" * 255
    assert id_part(long).startswith("%h") and len(id_part(long)) <= ID_PART_CHARS
    assert id_part(long) != id_part(long[:-1] + "y")
    assert len(turn_unit_id(long, long)) <= 255
