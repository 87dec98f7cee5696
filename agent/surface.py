"""The LangChain surface: synthehr's tools, knowledge retriever and vector store for your own LangChain app.

    import synthehr
    tools = synthehr.get_tools("./synthehr-workspace")        # list[BaseTool]
    retriever = synthehr.get_retriever(k=4)                   # BaseRetriever (hybrid ranking)
    store = synthehr.get_vectorstore()                        # langchain_chroma.Chroma over the same collection

Each is bound to a workspace (default: the configured one, `SYNTHEHR_HOME` or ./synthehr-workspace).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from synthehr.agent.plugins import registry_with_plugins
from synthehr.agent.tooling import to_langchain_tools
from synthehr.configs.settings import load_settings
from synthehr.tools.deps import Deps, build_deps


def _deps(workspace: str | Path | None, config: str | Path | None, session: str) -> Deps:
    settings = load_settings(config)
    if workspace is not None:
        settings = settings.model_copy(update={"workspace": settings.workspace.model_copy(update={"path": Path(workspace)})})
    return build_deps(settings=settings, session=session)


def get_tools(workspace: str | Path | None = None, *, config: str | Path | None = None, session: str = "default",
              plugins: bool = True, deps: Deps | None = None) -> list[Any]:
    """The registered tools (built-in, plus `synthehr.tools` entry-point plugins) as LangChain BaseTools.

    Each returns its short observation as content and the structured `ToolResult` as artifact.
    """
    deps = deps or _deps(workspace, config, session)
    registry, _ = registry_with_plugins() if plugins else (None, [])
    if registry is None:
        from synthehr.tools.registry import default_registry

        registry = default_registry()
    return list(to_langchain_tools(registry, deps).values())


class KnowledgeRetriever(BaseRetriever):
    """Passages of synthehr's knowledge index (sources, guidelines, methods, data-set lineage), ranked by
    the same hybrid score as the explain_provenance tool (embeddings + BM25 + title/section matches)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    k: int = 4
    kinds: list[str] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits = self.index.search(query, k=self.k, kinds=self.kinds)
        return [
            Document(
                page_content=h.body(),
                id=h.id,
                metadata={"title": h.title, "url": h.url, "source": h.url or h.doc_id, "doc_id": h.doc_id,
                          "section": h.section, "kind": h.kind, "year": h.year, "score": round(h.score, 4)},
            )
            for h in hits
        ]


def get_retriever(workspace: str | Path | None = None, k: int = 4, *, kinds: list[str] | None = None,
                  config: str | Path | None = None, deps: Deps | None = None) -> KnowledgeRetriever:
    """A LangChain retriever over the knowledge index (built on first use, offline)."""
    deps = deps or _deps(workspace, config, "default")
    return KnowledgeRetriever(index=deps.index, k=k, kinds=kinds)


class IndexEmbeddings(Embeddings):
    """LangChain `Embeddings` backed by the index's own packaged MiniLM model (normalised, offline)."""

    def __init__(self, index: Any):
        self._index = index

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._index.embed(list(texts))

    def embed_query(self, text: str) -> list[float]:
        return self._index.embed([text])[0]


def get_vectorstore(workspace: str | Path | None = None, *, config: str | Path | None = None, deps: Deps | None = None) -> Any:
    """A `langchain_chroma.Chroma` view of the knowledge collection (plain dense search, same embeddings).

    Read it; add documents through `synthehr index` so the hybrid ranking's keyword side stays in step.
    """
    from langchain_chroma import Chroma

    deps = deps or _deps(workspace, config, "default")
    index = deps.index
    index.ensure_built()
    return Chroma(client=index.client, collection_name=index.collection_name, embedding_function=IndexEmbeddings(index))
