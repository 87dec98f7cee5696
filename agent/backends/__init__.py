"""LLM backends behind agent.llm.create_backend (each module imports its heavy library lazily)."""
