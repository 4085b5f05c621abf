"""The OpenAI-compatible completions API of `charrnn serve`, laid out as vLLM's entrypoints/openai:
protocol.py (request and response models), stops.py (stop strings), serving_completion.py and
serving_models.py (the handlers), routes.py (the routes, and install() to add them to an app)."""
