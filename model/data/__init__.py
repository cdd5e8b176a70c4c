"""The data side: recordings and their readers, the causal preprocessing, windows and splits, and
the dataset kinds (:mod:`model.data.kinds`). No torch: the live path reads recordings through it."""
