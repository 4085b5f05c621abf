"""Training: the trainer loop and everything around it (run folder set-up and resume, optimizer, logs,
fine-tuning, the recipe for a time budget, presets, many processes)."""
