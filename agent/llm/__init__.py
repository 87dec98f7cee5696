"""The LLM layer: the backend protocol, the factory, one module per backend, chat formats."""
