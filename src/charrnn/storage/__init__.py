"""Files on disk: atomic writes and the run lock, every file format's schema, the run folder's layout.

No PyTorch here: reading a run's config, vocabulary or metrics needs only the standard library and pydantic.
"""
