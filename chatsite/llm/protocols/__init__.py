"""One module per wire protocol a chat instance may speak, behind one interface.

`base` holds what they all turn requests into and answers out of (protocol-neutral
requests and pieces); `ollama` and `openai` each know one wire, the way `coordination/`
keeps one module per back end.
"""
