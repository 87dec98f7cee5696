"""synthehr's conversation layer: LLM backends, the ReAct agent, sessions, CLI and web page."""

__version__ = "0.1.0"
