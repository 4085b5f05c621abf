"""`charrnn serve`: the HTTP app, its own API, the OpenAI-compatible API, continuous batching and the page.
No PyTorch here: the model arrives already loaded."""
