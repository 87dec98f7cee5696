"""Faces for people: the `synthehr` command, one module per group of commands."""
