"""synthehr: ask in plain language for differentially private synthetic patient records.

The one top-level package. Its subpackages are the repository's folders:
`synthehr.agent` (faces, agent loop, LLM layer), `synthehr.tools` (tool specs, engines, storage),
`synthehr.knowledge` (documents and condition profiles) and `synthehr.configs` (settings).
Nothing heavy is imported here; the LangChain surface loads on first use.
"""

from __future__ import annotations

from pathlib import Path as _Path
from typing import Any

__version__ = "0.2.0"

# In a source checkout (editable install, or tests run from the repository) the subpackages are the
# sibling folders agent/, tools/, knowledge/, configs/; a built wheel has them inside this folder.
_here = _Path(__file__).resolve().parent
if not (_here / "agent").is_dir() and (_here.parent / "agent" / "__init__.py").is_file() and (_here.parent / "pyproject.toml").is_file():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

__all__ = ["__version__", "get_tools", "get_retriever", "get_vectorstore", "run_turn"]


def get_tools(workspace: Any = None, **kwargs: Any) -> list[Any]:
    """The built-in tools as LangChain `BaseTool`s bound to a workspace (see synthehr.agent.surface)."""
    from synthehr.agent.surface import get_tools as _get_tools

    return _get_tools(workspace, **kwargs)


def get_retriever(workspace: Any = None, k: int = 4, **kwargs: Any) -> Any:
    """A LangChain `BaseRetriever` over the knowledge index (see synthehr.agent.surface)."""
    from synthehr.agent.surface import get_retriever as _get_retriever

    return _get_retriever(workspace, k=k, **kwargs)


def get_vectorstore(workspace: Any = None, **kwargs: Any) -> Any:
    """A langchain-chroma `VectorStore` view over the knowledge collection (see synthehr.agent.surface)."""
    from synthehr.agent.surface import get_vectorstore as _get_vectorstore

    return _get_vectorstore(workspace, **kwargs)


def run_turn(deps: Any, llm: Any, text: str, **kwargs: Any) -> Any:
    """One agent turn (see synthehr.agent.loop.run_turn); `config=` takes a LangChain `RunnableConfig`, so the
    turn is one trace whose children are its LLM and tool calls."""
    from synthehr.agent.loop import run_turn as _run_turn

    return _run_turn(deps, llm, text, **kwargs)
