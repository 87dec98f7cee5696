"""synthehr knowledge base: Markdown documents and condition profiles (resources only, no code)."""
