"""synthehr tools: plain typed functions the agent can call, and the engines they use.

Nothing here imports LangChain; `synthehr.agent.tooling` adapts the registry's tools for it.
Heavy libraries (torch, opacus, chromadb, transformers) are imported inside functions.
"""
