"""Persistence: models, sessions, queries and migrations."""
