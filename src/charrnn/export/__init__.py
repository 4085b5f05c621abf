"""Export a run as a one-step ONNX generator."""
