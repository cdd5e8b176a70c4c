"""Every bound of the live path, in one place: what is accepted, and what happens past it.

Like mosquitto's ``message_size_limit`` and friends, each limit is a named number with a reason
under which whatever falls outside it is counted (per device) and dropped. docs/live.md's "Limits"
table lists the same numbers. The point of most of them is that the work done for a message is
bounded by the bytes it carries, never by what it claims (a rate, a sample count, a timestamp).
"""

from __future__ import annotations

# the bounds training shares with the live path live in model/ (which never imports streamer/)
from model.data.input_limits import GAP_PERIODS, OTHER_UNIT_LIMIT, VALUE_LIMITS, value_limits  # noqa: F401

# -- one message (streamer.core.wire, streamer.sources.serial_source) ---------------------------------
MAX_PAYLOAD_BYTES = 1 << 20  # a bigger message is refused before it is parsed: "payload over 1 MB"
MAX_SAMPLES_PER_MESSAGE = 10_000  # in every format (JSON batch, binary frame): "too many samples"
WIRE_RATE_HZ = (1.0, 1000.0)  # a rate a message may announce: "hz out of range"
MAX_ABS_TIME_S = 1e10  # |t| of a timestamp (year 2286 as Unix time): "t out of range"

# -- one device's stream (streamer.core.scheduler) ------------------------------------------------------
# A device's rate, announced or measured from its timestamps, as a multiple of the model's rate:
# 12.5-400 Hz for a 50 Hz model. Outside: "rate out of range". The lower bound is what keeps
# resampling from multiplying samples: with at most GAP_PERIODS of the slowest rate between two
# samples, one input sample becomes at most GAP_PERIODS / RATE_RATIO[0] = 20 resampled ones.
RATE_RATIO = (0.25, 8.0)
# GAP_PERIODS (model.data.input_limits): a silence longer than this many sample periods restarts the
# stream ("gap"); training splits a recording at a lost reading by the same number
# A timestamp this far behind the device's latest (a reboot that restarted its clock, a spoofed
# message from the future before it) restarts the stream instead of being dropped as out of order;
# so does a step forward this much longer than the time that passed here ("clock jump").
CLOCK_JUMP_S = 5.0
# |value| of a raw channel by its unit, VALUE_LIMITS / OTHER_UNIT_LIMIT / value_limits
# (model.data.input_limits, shared with training, which refuses a recording holding one). Outside:
# "value out of range". A filter state that turns non-finite anyway restarts the stream.

# -- the fleet (streamer.core.scheduler, streamer.core.pipeline) --------------------------------------
MAX_DEVICES = 1000  # streams kept at once (`--max-devices`)
# At the device limit, a new device takes the slot of the device silent the longest, if that one
# has been silent for at least this long; otherwise the new device's samples are "device limit".
ADMIT_AFTER_SILENCE_S = 5.0
IDLE_TIMEOUT_S = 300.0  # a device silent this long is forgotten (`--idle-timeout`)

# -- a worker of `harstream fleet` on RabbitMQ (streamer.sources.fleet) -------------------------------------
# Messages a worker holds unacknowledged, all partitions together (each partition's channel gets
# FLEET_UNACKED // partitions as its prefetch): below the pipeline's queue (256), so a worker never
# sheds what the broker would otherwise keep for it; the broker holds the rest in the queue.
FLEET_UNACKED = 192
FLEET_MAX_PARTITIONS = 128  # `--partitions`: at most this many, so each channel may hold one

# -- labels while recording (streamer.sources.labelling) ----------------------------------------------------
# A device's label (har/<device>/label) may come before its first samples, so the labels of devices
# that have sent nothing are kept, at most this many: the oldest is forgotten (counted) when another
# comes. Labels of devices that send are kept for MAX_DEVICES of them (the recorder's limit), the
# least recently heard forgotten first. A label's device id follows streamer.core.wire.valid_device_id.
MAX_WAITING_LABELS = MAX_DEVICES
