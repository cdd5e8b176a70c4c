"""``harstream web`` without a browser: the store readers it added, the live state's checks on what
the broker says, the retained health message, the server's answers (404s, 401s, headers, a store or
broker that is down), the batched push, and that it never imports torch.
(The page itself, in chromium: tests/test_web_browser.py.)"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from live_fixtures import ROOT, mqtt_client
from web_fixtures import WebServer

from model.train.report import glyphs
from streamer.core.mqtt_connection import TopicPattern
from streamer.sinks.device_health import HealthPublisher
from streamer.sinks.store import Store, Target
from streamer.sinks.store_reader import has_device, read_history, read_latest, read_totals
from streamer.web.data import HAPT, activities
from streamer.web.live import MAX_TEXT, LiveState


def filled_store(path: Path, now: float) -> Target:
    store = Store(Target.parse(str(path))).start()
    for k in range(10):
        store.add_prediction("wrist", now - 100 + k, "WALKING" if k < 6 else "SITTING", 0.9, None, 1.0)
    store.add_prediction("ankle", now - 50, "LAYING", 0.7, None, 2.0)
    store.add_prediction("ankle", now - 86400 * 3, "STANDING", 0.8, None, 2.0)  # three days ago
    store.add_episode("wrist", "WALKING", now - 100, now - 94, 0.9, 6)
    store.add_episode("only-episodes", "SITTING", now - 10, now - 5, 0.9, 5)
    store.close()
    return Target.parse(str(path))


def test_the_store_readers_it_added_agree_with_history(tmp_path) -> None:
    now = time.time()
    target = filled_store(tmp_path / "h.db", now)
    assert read_latest(target) == {"ankle": {"label": "LAYING", "confidence": 0.7, "t": round(now - 50, 3)},
                                   "wrist": {"label": "SITTING", "confidence": 0.9, "t": round(now - 91, 3)}}
    since = now - 3600
    history = read_history(target, since=since)["devices"]
    totals = read_totals(target, since=since)
    assert totals == {d: e["seconds"] for d, e in history.items() if e["seconds"]}
    assert totals["wrist"] == {"SITTING": 4.0, "WALKING": 6.0}
    assert read_totals(target, until=since, device="ankle") == {"ankle": {"STANDING": 2.0}}
    assert has_device(target, "only-episodes") and has_device(target, "wrist") and not has_device(target, "x")


def test_the_live_state_keeps_what_it_can_show_and_drops_the_rest() -> None:
    live = LiveState(None)
    good = {"label": "WALKING", "confidence": 0.93, "t": 1.5, "probs": {"WALKING": 0.93, "SITTING": 0.07}}
    live.handle("har/wrist/activity", json.dumps(good).encode())
    assert live.of("wrist")["activity"] == good and live.take_changed() == {"wrist"}
    odd = {"label": "x" * 5000, "confidence": "high", "t": True, "probs": {"A": "0.5", "B": 1e400, "C": 0.5}}
    live.handle("har/wrist/activity", json.dumps(odd).replace("Infinity", "1e999").encode())
    assert live.of("wrist")["activity"] == {"label": "x" * MAX_TEXT, "confidence": None, "t": None,
                                            "probs": {"C": 0.5}}  # fmt: skip
    for topic, payload in (("har/a/activity", b"not json"), ("har/b/activity", b"[1, 2]"),
                           ("har/c/activity", b"\xff\xfe"), ("har/d/imu", b"{}"), ("other/e/activity", b"{}"),
                           ("har/f/g/activity", b"{}"), ("har/h/activity", b"x" * (2 << 20))):  # fmt: skip
        live.handle(topic, payload)
    assert live.ids() == ["wrist"]
    live.handle("har/wrist/event", b'{"event": "start", "activity": "SITTING", "t": 2.0}')
    live.handle("har/wrist/health", b'{"rate_hz": 49.9, "model_hz": 50, "gaps": 2, "dropped": {"bad": 3}}')
    state = live.of("wrist")
    assert state["events"] == [{"event": "start", "activity": "SITTING", "t": 2.0, "duration_s": None}]
    assert state["health"]["rate_hz"] == 49.9 and state["health"]["dropped"] == {"bad": 3.0}
    live.handle("har/wrist/activity", b"")  # the recognizer let the device go: its activity is cleared
    assert "activity" not in live.of("wrist") and live.of("nobody") is None


def test_letters_and_colours_are_the_dashboard_s_whichever_activities_were_seen() -> None:
    dashboard = glyphs(HAPT)  # the terminal dashboard's, for the shipped model's classes
    for seen in ({"STANDING"}, {"SITTING", "LAYING"}, set(HAPT), {"STANDING", "cycling"}):
        got = activities(seen)
        assert set(got) == seen
        assert all(got[n]["letter"] == dashboard[n] for n in seen if n in dashboard)
    assert activities({"uncertain"})["uncertain"]["colour"] == "#6c6c6c"


def test_health_goes_out_retained_at_most_every_few_seconds_and_is_cleared_when_forgotten() -> None:
    sent: list[tuple] = []
    connection = SimpleNamespace(publish=lambda topic, body, qos, retain: sent.append((topic, body, retain)),
                                 options=SimpleNamespace(topic=TopicPattern.parse("har/+/imu")))  # fmt: skip
    counters = SimpleNamespace(samples=500, windows=7, gaps=1, clock_jumps=0)
    stream = SimpleNamespace(counters=counters, rate_hz=49.87)
    drops = SimpleNamespace(of=lambda device: Counter({"non-finite value": 4}))
    scheduler = SimpleNamespace(devices={"wrist": stream}, rate_hz=50.0, drops=drops)
    pipeline = SimpleNamespace(scheduler=scheduler)
    health = HealthPublisher(connection, pipeline, every_s=60)
    for _ in range(3):
        health(SimpleNamespace(device="wrist"))
    health(SimpleNamespace(device="gone"))  # not served: nothing to say
    assert len(sent) == 1
    topic, body, retain = sent[0]
    assert topic == "har/wrist/health" and retain
    assert json.loads(body) | {"t": 0} == {"t": 0, "rate_hz": 49.87, "model_hz": 50.0, "samples": 500,
                                          "windows": 7, "gaps": 1, "clock_jumps": 0,
                                          "dropped": {"non-finite value": 4}}  # fmt: skip
    health.forget("wrist")
    assert sent[-1] == ("har/wrist/health", b"", True)


def test_the_web_package_never_imports_torch_and_ships_its_page() -> None:
    code = ("import sys, streamer.web.server, streamer.cli.web, streamer.cli.main; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'pandas', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    web = ROOT / "streamer" / "web"
    files = [p.relative_to(web).as_posix() for p in (web / "static").iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in shipped["streamer.web"]) for f in files)


def test_the_server_answers_safely_with_the_store_and_broker_down(tmp_path) -> None:
    from live_fixtures import free_port

    server = WebServer(tmp_path / "not-yet.db", "--broker", f"mqtt://127.0.0.1:{free_port()}")
    try:
        deadline = time.monotonic() + 10
        fleet = server.json("/api/fleet")
        while time.monotonic() < deadline and fleet["broker"]["ok"]:
            time.sleep(0.2)
            fleet = server.json("/api/fleet")
        assert fleet["devices"] == [] and not fleet["store"]["ok"]
        assert "no store at" in fleet["store"]["status"]
        assert not fleet["broker"]["ok"] and "broker" in fleet["broker"]["status"]
        for path in ("/", "/api/fleet", "/static/app.js", "/nope", "/device/nobody", "/api/stream?x"):
            headers = (server.get(path) if path != "/api/stream?x" else stream_head(server, path))[1]
            assert "script-src 'self'" in headers["Content-Security-Policy"], path
            assert headers["X-Content-Type-Options"] == "nosniff"
        # the store cannot be read: the page shows its banner, not a 404 that may be false
        assert server.get("/device/%3Cscript%3E")[0] == 200
        assert server.get("/api/history?since=someday")[0] == 400
        assert server.get("/api/history")[0] == 503
        assert server.process.poll() is None
    finally:
        server.stop()
    assert not [line for line in server.err.lines if "Traceback" in line]


def stream_head(server: WebServer, path: str) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(server.url + path, timeout=5) as response:
        return response.status, dict(response.headers), response.readline()


def test_bad_paths_and_unknown_devices_are_404_pages(tmp_path) -> None:
    target = filled_store(tmp_path / "h.db", time.time())
    server = WebServer(target.where)
    try:
        for path in ("/nope", "/device/nobody", "/static/../cli/main.py", "/static/%2e%2e/data.py",
                     "/static/index.htm", "/device/wrist%00x", "/api/nope"):  # fmt: skip
            status, _, body = server.get(path)
            assert status == 404, path
            assert b"Traceback" not in body and b"nobody" not in body
        assert server.get("/nope")[1]["Content-Type"].startswith("text/html")
        assert server.get("/api/device?id=nobody")[:2][0] == 404
        assert server.get("/device/only-episodes")[0] == 200
        wearer = server.json("/api/device?id=wrist")
        assert wearer["today"] == read_history(target, "wrist", since=wearer_midnight())
        assert len(wearer["days"]) == 7 and wearer["days"][-1]["seconds"] == {"SITTING": 4.0, "WALKING": 6.0}
    finally:
        server.stop()


def wearer_midnight() -> float:
    from streamer.web.data import midnight

    return midnight()


@pytest.mark.parametrize(("args", "words"), [
    (["--host", "0.0.0.0"], "give --token"),
    (["--host", "example.org"], "give --token"),
    (["--token", "short"], "at least 8 characters"),
    (["--port", "70000"], "--port"),
    (["--broker", "http://x"], "bad broker"),
])  # fmt: skip
def test_unsafe_or_bad_options_are_one_line(args, words, tmp_path) -> None:
    command = [sys.executable, "-m", "streamer.cli.main", "web", "--store", str(tmp_path / "h.db"), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode in (1, 2) and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_live_changes_reach_the_page_s_stream_in_batches(broker, tmp_path) -> None:
    target = filled_store(tmp_path / "h.db", time.time())
    server = WebServer(target.where, "--broker", broker.url)
    publisher = mqtt_client(broker.url)
    try:
        with urllib.request.urlopen(server.url + "/api/stream", timeout=10) as stream:
            assert stream.readline() == b"event: status\n"
            time.sleep(0.5)
            for k in range(300):
                body = {"label": "WALKING", "confidence": 0.5, "t": time.time(), "probs": {}}
                publisher.publish(f"har/dev-{k:03d}/activity", json.dumps(body), qos=0)
            seen: set[str] = set()
            events = 0
            deadline = time.monotonic() + 10
            while len(seen) < 300 and time.monotonic() < deadline:
                line = stream.readline()
                if line.startswith(b"event: devices"):
                    events += 1
                elif line.startswith(b"data: ") and events:
                    seen |= {row["id"] for row in json.loads(line[6:])["devices"]}
        assert {f"dev-{k:03d}" for k in range(300)} <= seen
        assert events <= 20  # 300 changes in a few pushes, not 300
    finally:
        publisher.loop_stop()
        server.stop()
