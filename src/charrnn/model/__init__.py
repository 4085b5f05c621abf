"""The network (Embedding -> GRU/LSTM/RNN -> Dense), the device-and-precision policy, the one-character
stepper, scoring, a run read without PyTorch, weights on disk and the summary."""
