import http.server
import io
import threading
import zipfile

import pytest

from streamer.cli.main import main


@pytest.fixture
def server(tmp_path):
    """A local HTTP server with a well-formed and a corrupt OPPORTUNITY-shaped archive."""
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("OpportunityUCIDataset/dataset/S1-ADL1.dat", "0 " + "1 " * 249 + "\n")
    (tmp_path / "good.zip").write_bytes(good.getvalue())
    (tmp_path / "bad.zip").write_bytes(good.getvalue()[:-40] + b"\0" * 40)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args):
            super().__init__(*args, directory=str(tmp_path))

        def log_message(self, *args):  # the server's access log would mix into stderr
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_checks_and_extracts(server, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["download", "opportunity", "--to", str(out), "--url", f"{server}/good.zip"]) == 0
    assert (out / "OpportunityUCIDataset/dataset/S1-ADL1.dat").exists()
    assert "python train.py --config configs/opportunity_18.toml" in capsys.readouterr().out


def test_a_corrupt_archive_is_one_line(server, tmp_path, capsys):
    assert main(["download", "opportunity", "--to", str(tmp_path / "d"), "--url", f"{server}/bad.zip"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "zip" in err


def test_offline_is_one_line(tmp_path, capsys):
    # Nothing listens on port 9 of the loopback address: the fetch fails at once, as offline.
    assert main(["download", "uci-har", "--to", str(tmp_path), "--url", "http://127.0.0.1:9/x.zip"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is this machine online?" in err
