import gzip
import io
import os
import pickle

import numpy as np
import pytest

from model.data.recordings import hapt_path
from model.data.safe_pickle import UnsafePickleError, frame_columns, restricted_load


class RunsShell:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_a_shell_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": RunsShell(str(marker))}, protocol=2)
    with pytest.raises(UnsafePickleError, match="not on the allow-list"):
        restricted_load(io.BytesIO(payload))
    assert not marker.exists()


@pytest.mark.parametrize("target", [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load")])
def test_any_global_outside_the_allow_list_is_refused(target):
    module, name = target
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(UnsafePickleError):
        restricted_load(io.BytesIO(payload))


def test_plain_numpy_arrays_round_trip():
    array = np.arange(12, dtype=np.float64).reshape(3, 4)
    loaded = restricted_load(io.BytesIO(pickle.dumps(array, protocol=2)))
    np.testing.assert_array_equal(loaded, array)


def test_hapt_frames_rebuild_into_named_columns():
    with gzip.open(hapt_path(), "rb") as stream:
        by_subject = restricted_load(stream)
    assert sorted(by_subject) == list(range(1, 31))
    columns = frame_columns(by_subject[1][0])
    assert list(columns) == ["acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z", "sequence", "label"]
    assert len({len(c) for c in columns.values()}) == 1
