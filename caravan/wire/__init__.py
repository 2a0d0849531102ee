"""Wire types: one module per protocol (Ollama native, OpenAI, queue messages)."""
