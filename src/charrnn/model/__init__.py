"""The network (Embedding -> GRU/LSTM/RNN -> Dense), the device-and-precision policy, the one-character
stepper, scoring, weights on disk and the summary."""
