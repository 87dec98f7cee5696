"""The agent layer: the ReAct loop, grounding, router, session, prompts, and under it the LLM layer and the faces (cli/, web/)."""
