"""What the run's episodes hand the history store (:mod:`streamer.sinks.store`): each prediction and
each ended episode, put on the wall clock. A module of its own so that the store and its readers
(:mod:`streamer.sinks.store_reader`, which the screens import) need nothing of the episodes.
"""

from __future__ import annotations

import time

from streamer.core.types import Prediction
from streamer.sinks.episodes import Episode, EpisodeSink
from streamer.sinks.store import EPOCH_2000, Store


class StoreSink(EpisodeSink):
    """What :class:`~streamer.sinks.episodes.Episodes` hands the store: each prediction (credited its
    hop) and each ended episode, on the wall clock. ``wall_start``: added to a recording's clock
    (timestamps before 2000); the caller moves it back for a replay faster than real time (see
    :mod:`streamer.sinks.store`'s docstring). The store is its opener's to close
    (:meth:`Store.close`), not the sink's."""

    def __init__(self, store: Store, hop_s: float, wall_start: float | None = None) -> None:
        self.store = store
        self.hop_s = hop_s
        self.wall_start = time.time() if wall_start is None else wall_start

    def wall(self, t: float) -> float:
        return t + self.wall_start if t < EPOCH_2000 else t

    def __call__(self, prediction: Prediction) -> None:
        self.store.add_prediction(prediction.device, self.wall(prediction.t), prediction.label,
                                  prediction.confidence, prediction.truth, self.hop_s)  # fmt: skip

    def finished(self, episode: Episode) -> None:
        self.store.add_episode(episode.device, episode.activity, self.wall(episode.start),
                               self.wall(episode.end), episode.confidence, episode.windows)  # fmt: skip
