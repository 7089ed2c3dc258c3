"""Media types the service speaks beyond plain JSON, named once."""

NDJSON = "application/x-ndjson"  # streamed answers: one JSON object per line
