"""The network and its files: the residual bi-LSTM, checkpoints and their checked metadata, the
ONNX export. The metadata and the export's reader need no torch (a gateway runs them)."""
