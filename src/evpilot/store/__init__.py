"""Persistence: sessions, settings and lifetime counters."""
