"""Speed: CPU detection, the C kernels (gates.c for training, step.c for generation) with their one build
module, and the GRU operations built on them. Each GRU implementation here is checked against nn.GRU."""
