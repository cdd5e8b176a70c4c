import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.ringbuffer import RingBuffer


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 40), chunks=st.lists(st.integers(0, 90), max_size=30), data=st.data())
def test_latest_rows_are_the_tail_of_everything_appended(capacity, chunks, data):
    ring = RingBuffer(capacity, 2, dtype=np.float64)
    appended = np.zeros((0, 2))
    counter = 0
    for size in chunks:
        rows = np.arange(counter, counter + 2 * size, dtype=np.float64).reshape(size, 2)
        counter += 2 * size
        ring.extend(rows)
        appended = np.concatenate([appended, rows])
    assert len(ring) == min(capacity, len(appended))
    assert ring.total == len(appended)
    if len(ring):
        n = data.draw(st.integers(1, len(ring)))
        np.testing.assert_array_equal(ring.latest(n), appended[-n:])


def test_a_window_read_is_a_copy_not_a_view():
    ring = RingBuffer(4, 1)
    ring.extend(np.ones((4, 1)))
    window = ring.latest(4)
    ring.extend(np.zeros((4, 1)))
    assert window.sum() == 4


def test_clear_empties_the_buffer():
    ring = RingBuffer(4, 1)
    ring.extend(np.ones((3, 1)))
    ring.clear()
    assert len(ring) == 0 and ring.total == 0 and ring.fill == 0.0
