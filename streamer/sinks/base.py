"""The defaults every sink inherits, so that the pipeline and :class:`~streamer.sinks.episodes.Episodes`
call the same four methods on every sink and never look one up by name.

The contract itself, :class:`streamer.core.pipeline.Sink`, lives in core, since the pipeline calls it
and core imports nothing of the sinks; this base is its implementation of "nothing to do".
"""

from __future__ import annotations

from streamer.core.types import Prediction


class SinkBase:
    """A sink that does nothing: told of each prediction, of each device forgotten, of the run's
    end; no tallies of its own. Sinks override what they need."""

    def __call__(self, prediction: Prediction) -> None:
        """Every prediction, in the pipeline's thread: must not block."""

    def forget(self, device: str) -> None:
        """``device`` is no longer served: take back what was published about it."""

    def close(self) -> None:
        """The run ended."""

    def summary(self) -> dict:
        """Tallies for the run's summary (empty: none)."""
        return {}
