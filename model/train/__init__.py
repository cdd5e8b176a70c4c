"""Training and what is measured around it: the experiment (a config loaded and derived, its data
split), the training loop, metrics and reports, calibration, ensembles, init-config."""
