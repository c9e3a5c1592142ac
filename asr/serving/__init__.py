"""Serving: the HTTP API (OpenAI-compatible), the page and its live WebSocket over one recognizer; imports inference, inspect and below, never training or cli."""
