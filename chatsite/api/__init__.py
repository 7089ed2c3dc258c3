"""The HTTP edge: the blueprints (chat endpoints share one), request parsing, the gate, CORS."""
