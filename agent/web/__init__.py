"""Faces for people: the local chat page (FastAPI app and its static assets)."""
