"""Development-only code: the demo chat instance, `make run`, free local ports.

Nothing a production install runs imports this package.
"""
