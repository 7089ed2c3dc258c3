"""The HTTP edge: one blueprint per endpoint, request parsing, the gate before streaming, CORS."""
