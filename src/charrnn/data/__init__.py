"""Text in: sources (file, folder, glob, URL, built-in corpus), streaming preparation into ids, the
vocabulary, and training's batches (the only module here that needs PyTorch)."""
