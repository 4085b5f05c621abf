"""Generation: sampling and the one generation loop (no PyTorch), driven by the PyTorch model or an
exported ONNX model, and the one loader that opens either."""
