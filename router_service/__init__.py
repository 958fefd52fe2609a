"""OpenAI-compatible LLM router front end (Flask)."""
