"""The LLM side: the Ollama client, the model catalog, and the pool of instance slots."""
