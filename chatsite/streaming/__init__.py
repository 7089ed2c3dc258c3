"""Streamed replies: relay an instance's answer as NDJSON lines, save, always clean up."""
