"""The LangChain surface: synthehr.get_tools / get_retriever / get_vectorstore, tools from entry points,
and a plain LangChain `create_agent` that calls synthehr's tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import synthehr
from synthehr.agent.llm.base import ScriptedLLM
from synthehr.agent.loop import run_turn
from synthehr.agent.plugins import registry_with_plugins
from synthehr.tools.registry import default_registry

PLUGIN_CODE = '''
from langchain_core.tools import tool


@tool
def bmi_calculator(weight_kg: float, height_cm: float) -> str:
    """Body-mass index from weight in kilograms and height in centimetres."""
    return f"BMI {weight_kg / (height_cm / 100) ** 2:.1f} kg/m2"


def more_tools():
    return [bmi_calculator]
'''


def _fake_distribution(root: Path, value: str = "synthehr_fake_plugin:more_tools") -> Path:
    """A package installed only as files plus a dist-info that declares a `synthehr.tools` entry point."""
    (root / "synthehr_fake_plugin").mkdir(parents=True)
    (root / "synthehr_fake_plugin" / "__init__.py").write_text(PLUGIN_CODE)
    info = root / "synthehr_fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: synthehr-fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[synthehr.tools]\nbmi = {value}\n")
    return root


def test_get_tools_are_langchain_tools_bound_to_the_workspace(tmp_path: Path) -> None:
    from langchain_core.tools import BaseTool

    tools = synthehr.get_tools(tmp_path / "ws", plugins=False)
    assert all(isinstance(t, BaseTool) for t in tools)
    assert [t.name for t in tools] == default_registry().names
    budget = next(t for t in tools if t.name == "privacy_budget")
    msg = budget.invoke({"name": "privacy_budget", "args": {}, "id": "call-1", "type": "tool_call"})
    assert "nhanes-2017-2018" in msg.content  # the built-in source's ledger, read from this workspace
    assert (tmp_path / "ws" / "synthehr.db").is_file()


def test_entry_point_tool_is_listed_and_called_by_the_agent(tmp_path: Path, deps: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _fake_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    registry, plugins = registry_with_plugins()
    assert [p.name for p in plugins] == ["bmi_calculator"] and plugins[0].distribution == "synthehr-fake-plugin"
    assert registry.names[: len(default_registry())] == default_registry().names

    llm = ScriptedLLM([
        'Thought: Compute it.\nAction: bmi_calculator\nAction Input: {"weight_kg": 81, "height_cm": 180}',
        "Thought: Done.\nFinal Answer: The BMI is 25.0 kg/m2.",
    ])
    result = run_turn(deps, llm, "what is the BMI of someone weighing 81 kg at 180 cm?", registry=registry, router=None)
    assert result.steps[0]["tool"] == "bmi_calculator"
    assert result.steps[0]["args"] == {"weight_kg": 81, "height_cm": 180}
    assert "BMI 25.0 kg/m2" in llm.prompts[1]  # the plugin's real output came back as the observation
    assert "bmi_calculator" in llm.prompts[0]

    # Invalid arguments are corrected by the plugin's own schema, not a traceback.
    spec = registry.get("bmi_calculator")
    with pytest.raises(Exception) as exc:
        spec.run(deps, {"weight_kg": "heavy", "height_cm": 180})
    assert "weight_kg" in str(exc.value)


def test_tools_list_json_shows_the_plugin(tmp_path: Path) -> None:
    site = _fake_distribution(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHEHR_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["SYNTHEHR_HOME"] = str(tmp_path / "ws")
    r = subprocess.run([sys.executable, "-m", "synthehr", "tools", "list", "--json"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["bmi_calculator"]["origin"].startswith("plugin synthehr-fake-plugin")
    assert rows["bmi_calculator"]["arguments"] == ["weight_kg*", "height_cm*"]
    assert rows["generate_cohort"]["origin"] == "built-in"


def test_a_broken_plugin_is_skipped_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _fake_distribution(tmp_path / "site", value="synthehr_fake_plugin:does_not_exist")
    monkeypatch.syspath_prepend(str(site))
    registry, plugins = registry_with_plugins()
    assert plugins == [] and registry.names == default_registry().names


@pytest.fixture(scope="module")
def knowledge_deps(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("chromadb")
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from synthehr.configs.settings import Settings
    from synthehr.tools.base import SessionState
    from synthehr.tools.deps import Deps
    from synthehr.tools.engines.knowledge_index import KnowledgeIndex
    from synthehr.tools.store.catalog import Catalog
    from synthehr.tools.store.workspace import Workspace
    from tests._knowledge_corpus import write_corpus

    root = tmp_path_factory.mktemp("surface")
    docs = write_corpus(root / "docs", poison=False)
    ws = Workspace(root / "ws")
    client = chromadb.PersistentClient(path=str(ws.chroma_dir), settings=ChromaSettings(anonymized_telemetry=False))
    index = KnowledgeIndex(client, collection="surface-test", docs_root=docs)
    index.build()
    yield Deps(settings=Settings(), workspace=ws, catalog=Catalog(ws), session=SessionState(), index_factory=lambda _d: index)
    index.close()


def test_retriever_returns_cited_documents_in_the_hybrid_order(knowledge_deps: Any) -> None:
    from langchain_core.retrievers import BaseRetriever

    retriever = synthehr.get_retriever(k=3, deps=knowledge_deps)
    assert isinstance(retriever, BaseRetriever)
    question = "why is HbA1c 6.5 the diabetes cut-off?"
    docs = retriever.invoke(question)
    hits = knowledge_deps.index.search(question, k=3)
    assert [d.metadata["doc_id"] for d in docs] == [h.doc_id for h in hits]
    assert docs[0].metadata["doc_id"] == "ada-standards-of-care"
    for d in docs:
        assert {"title", "url", "source", "doc_id"} <= set(d.metadata) and d.page_content


def test_vectorstore_is_a_langchain_chroma_view_of_the_same_collection(knowledge_deps: Any) -> None:
    from langchain_chroma import Chroma

    store = synthehr.get_vectorstore(deps=knowledge_deps)
    assert isinstance(store, Chroma)
    found = store.similarity_search("HbA1c diagnostic threshold for diabetes", k=2)
    assert found and all(d.metadata.get("doc_id") for d in found)
    assert store._collection.count() == knowledge_deps.index.count()


def test_plain_langchain_create_agent_calls_synthehr_tools(tmp_path: Path) -> None:
    """The README's example: synthehr's tools inside langchain.agents.create_agent (scripted chat model)."""
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, ToolMessage

    class ScriptedChat(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedChat":
            return self

    script = iter([
        AIMessage(content="", tool_calls=[{"name": "privacy_budget", "args": {}, "id": "c1", "type": "tool_call"}]),
        AIMessage(content="The NHANES budget is untouched."),
    ])
    agent = create_agent(model=ScriptedChat(messages=script), tools=synthehr.get_tools(tmp_path / "ws", plugins=False))
    out = agent.invoke({"messages": [{"role": "user", "content": "how much privacy budget is left?"}]})
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert tool_msgs and tool_msgs[0].name == "privacy_budget" and "nhanes-2017-2018" in tool_msgs[0].content
    assert out["messages"][-1].content == "The NHANES budget is untouched."
