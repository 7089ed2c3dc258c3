"""The HTTP edge: one blueprint per endpoint, request parsing, admission, CORS."""
