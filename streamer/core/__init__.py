"""What flows and what bounds it: the records (samples, windows, predictions), the limits and the
drop ledger, the ring buffer, resampler and scheduler, the engine and its backends, the pipeline,
the wire formats and the Source protocol. Imports nothing of the other sub-packages."""
