"""Tool search with the real MiniLM model: the right tool ranks first, entropy tells peaked from flat."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from core.embedding import create_embedder
from tools.model import ExecutorKind, ExecutorSpec, ToolDefinition
from tools.registry import ToolRegistry
from tools.search import ToolSearch, search_words
from tools.store import InMemoryToolStore

CATALOGUE = {
    "send_email": "Send an email message to a recipient with a subject and body.",
    "get_weather": "Current weather and forecast for a city.",
    "query_google_search": "Search the web with Google and return result links.",
    "transfer_money": "Transfer money from the user's bank account to another account.",
    "create_calendar_event": "Create an event in the user's calendar at a date and time.",
    "read_file": "Read the contents of a file on disk.",
    "post_on_x": "Publish a post on the X (Twitter) social network.",
    "convert_currency": "Convert an amount between two currencies at today's rate.",
    "book_flight": "Book a flight ticket between two airports.",
    "translate_text": "Translate text from one language to another.",
}


def _tool(name: str, desc: str) -> ToolDefinition:
    return ToolDefinition(
        name,
        desc,
        {"type": "object", "properties": {"value": {"type": "string", "description": "input"}}},
        ExecutorSpec(ExecutorKind.HTTP, url="http://127.0.0.1:9/x"),
    )


@pytest.fixture(scope="module")
def tool_search() -> ToolSearch:
    # Shared by the module: tool vectors are cached per text, so the catalogue is embedded once.
    return ToolSearch(create_embedder())


@pytest.fixture
async def registry(tool_search: ToolSearch) -> AsyncIterator[ToolRegistry]:
    reg = ToolRegistry(InMemoryToolStore(), tool_search)
    for name, desc in CATALOGUE.items():
        await reg.register("t/a", _tool(name, desc))
    yield reg
    await reg.aclose()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("email my landlord that the rent will be late", "send_email"),
        ("will it rain in Lisbon tomorrow?", "get_weather"),
        ("wire 500 dollars to my brother", "transfer_money"),
        ("schedule a meeting with Anna next Tuesday at 3pm", "create_calendar_event"),
        ("tweet about our product launch", "post_on_x"),
        ("how much is 100 euros in yen", "convert_currency"),
    ],
)
async def test_right_tool_ranks_first(registry: ToolRegistry, query: str, expected: str) -> None:
    result = await registry.search("t/a", query, top_k=5)
    assert result.hits[0].tool.name == expected
    assert 0.0 <= result.entropy <= 1.0


async def test_entropy_is_lower_for_a_specific_query_than_a_vague_one(registry: ToolRegistry) -> None:
    specific = await registry.search("t/a", "translate this sentence into German", top_k=5)
    vague = await registry.search("t/a", "help me with something", top_k=5)
    assert specific.hits[0].tool.name == "translate_text"
    assert specific.entropy < vague.entropy


async def test_search_sees_changes_and_only_its_scope(registry: ToolRegistry) -> None:
    assert (await registry.search("t/b", "send an email", top_k=5)).hits == []
    await registry.unregister("t/a", "send_email")
    after = await registry.search("t/a", "send an email", top_k=3)
    assert "send_email" not in [h.tool.name for h in after.hits]


async def test_lexical_part_matches_tool_names(registry: ToolRegistry) -> None:
    result = await registry.search("t/a", "query_google_search", top_k=3)
    assert result.hits[0].tool.name == "query_google_search" and result.hits[0].lexical == 1.0


def test_search_words_split_identifiers() -> None:
    assert search_words("sendEmail to_user.v2") == "send Email to user v2"


class _SlowListStore(InMemoryToolStore):
    """``list_tools`` returns its catalogue only once told to (once): a slow database read."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = False
        self.read_done = threading.Event()
        self.go = threading.Event()

    def list_tools(self, scope: str) -> list[ToolDefinition]:
        tools = super().list_tools(scope)
        if self.slow:
            self.slow = False
            self.read_done.set()
            self.go.wait(10)
        return tools


async def test_an_index_built_from_a_catalogue_read_before_a_change_is_not_kept() -> None:
    store = _SlowListStore()
    reg = ToolRegistry(store, ToolSearch(create_embedder("hashing")))
    try:
        for name in ("get_weather", "send_email"):
            await reg.register("t/a", _tool(name, CATALOGUE[name]))
        store.slow = True
        search = asyncio.create_task(reg.search("t/a", "weather forecast", top_k=5))
        assert await asyncio.to_thread(store.read_done.wait, 10)  # the catalogue still holds get_weather ...
        await reg.unregister("t/a", "get_weather")  # ... which is removed before the index is built from it
        store.go.set()
        await search
        for _ in range(2):
            later = await reg.search("t/a", "weather forecast", top_k=5)
            assert [h.tool.name for h in later.hits] == ["send_email"]
    finally:
        store.go.set()
        await reg.aclose()
