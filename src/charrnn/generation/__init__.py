"""Generation: sampling and the one generation loop (no PyTorch), driven by the step kernels without
PyTorch (a GRU on the CPU), the PyTorch model or an exported ONNX model, and the one loader that opens any."""
