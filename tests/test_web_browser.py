"""``harstream web`` in a real browser (Debian's chromium, headless, through selenium): recordings
published through a real mosquitto to a real recognizer (``harstream mqtt --publish --store``) show
on the fleet page, live; a wearer's totals are ``harstream history --json``'s; hostile names render
as text and run nothing; a ``?token=`` link lets the browser in, nothing else does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import paho.mqtt.client as mqtt
import pytest
from live_fixtures import ROOT, Lines, harstream, mqtt_client
from test_mqtt import options, publish_recording, recording_device
from web_fixtures import WebServer, chromium, rendered, screenshot

from model.data.recordings import Recording, load_hapt, write_csv_recording
from streamer.sinks.store import Store, Target
from streamer.tools.simulated_wearable import Publisher

pytestmark = pytest.mark.slow


@pytest.fixture
def browser():
    yield from chromium()

NAMES = "return [...document.querySelectorAll('a.device')].map((a) => a.textContent)"
ROW = """const link = [...document.querySelectorAll('a.device')].find((a) => a.textContent === arguments[0]);
if (!link) return null;
const tr = link.closest('tr');
return [tr.querySelector('.c-label .badge').textContent, tr.querySelector('.c-confidence').textContent];"""


def cut(subject: int, name: str, folder: Path, seconds: float = 40.0) -> Path:
    full = load_hapt((subject,))[0]
    n = int(seconds * full.rate_hz)
    part = Recording(name, full.subject, full.timestamps[:n], full.values[:n], full.labels[:n],
                     full.channels, full.classes, full.rate_hz)  # fmt: skip
    path = folder / f"{name}.csv"
    write_csv_recording(path, part)
    return path


def cli_json(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "streamer.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def watch(url: str, topics: tuple[str, ...]) -> tuple[mqtt.Client, list[tuple[float, str, dict]]]:
    """(arrival, topic, body) of every non-empty message on ``topics``."""
    got: list[tuple[float, str, dict]] = []
    watcher = mqtt_client(url)
    watcher.on_message = lambda c, u, m: m.payload and got.append((time.monotonic(), m.topic,
                                                                   json.loads(m.payload)))  # fmt: skip
    for topic in topics:
        watcher.subscribe(topic, qos=1)
    return watcher, got


def follow(driver, device: str, seconds: float, stop: threading.Event) -> list[tuple[float, tuple]]:
    """What the fleet page shows for ``device``'s activity, every 50 ms: (when, (badge, confidence))."""
    seen: list[tuple[float, tuple]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        shown = driver.execute_script(ROW, device)
        seen.append((time.monotonic(), tuple(shown) if shown else ()))
        time.sleep(0.05)
    return seen


def lags(messages: list[tuple[float, dict]], seen: list[tuple[float, tuple]]) -> list[float]:
    """For each prediction, how long until the page showed it (or a newer one): seconds."""

    def shows(row: tuple, body: dict) -> bool:  # the badge is "L LABEL", the confidence a whole percent
        return (bool(row) and row[0].split(" ", 1)[-1] == body["label"]
                and abs(int(row[1].rstrip("%")) - 100 * body["confidence"]) <= 1)  # fmt: skip

    out = []
    for k, (arrived, _) in enumerate(messages):
        shown = next((when for when, row in seen
                      if when >= arrived and any(shows(row, m) for _, m in messages[k:])), None)  # fmt: skip
        out.append(float("inf") if shown is None else shown - arrived)
    return out


def test_a_recognizer_s_fleet_shows_live_and_a_wearer_s_totals_are_history_s(
        broker, short_recording, browser, tmp_path) -> None:  # fmt: skip
    store = tmp_path / "history.db"
    others = [cut(4, "ankle-04", tmp_path), cut(9, "chest-09", tmp_path)]
    recognizer = harstream("mqtt", "--broker", broker.url, "--publish", "--store", str(store), "--headless",
                           "--hop", "64", "--client-id", "web-e2e")  # fmt: skip
    err = Lines(recognizer.stderr)
    server = None
    watcher, got = watch(broker.url, ("har/+/activity", "har/+/health"))
    try:
        connected = err.wait(lambda ls: any("connected" in x for x in ls), 60)
        assert any("connected" in x for x in connected), connected
        server = WebServer(store, "--broker", broker.url)
        for path in others:  # two more wearers, at once
            publish_recording(broker.url, path, path.stem)
        browser.get(server.url + "/")
        rendered(browser)
        wrist = Publisher(options(broker.url), recording_device(short_recording), "wrist", speed=1.0)
        wrist.connect(5)
        done = threading.Event()
        playing = threading.Thread(target=lambda: (wrist.run(threading.Event()), done.set()), daemon=True)
        playing.start()
        seen = follow(browser, "wrist", 60, done)
        time.sleep(2.5)  # the last prediction's 2 s
        seen += follow(browser, "wrist", 2.5, threading.Event())
        wrist.close()
        names = browser.execute_script(NAMES)
        assert sorted(names) == ["ankle-04", "chest-09", "wrist"]
        screenshot(browser, "web-fleet.png")
    finally:
        recognizer.send_signal(signal.SIGTERM)
        recognizer.wait(20)
        watcher.loop_stop()
    messages = [(when, body) for when, topic, body in got if topic == "har/wrist/activity"]
    assert len(messages) >= 20, len(messages)  # 40 s at hop 64: about 30
    late = [lag for lag in lags(messages, seen) if lag > 2.0]
    assert not late, f"{len(late)} of {len(messages)} predictions took over 2 s to show: {late[:5]}"
    health = [body for _, topic, body in got if topic == "har/wrist/health"]
    assert health and health[-1]["model_hz"] == 50.0
    assert health[-1]["rate_hz"] == pytest.approx(50.0, rel=0.05)
    fields = {"t", "rate_hz", "model_hz", "samples", "windows", "gaps", "clock_jumps", "dropped"}
    assert set(health[-1]) == fields
    try:
        wearer_matches_history(browser, server, store)
    finally:
        server.stop()


def wearer_matches_history(driver, server: WebServer, store: Path) -> None:
    want = cli_json("history", "--store", str(store), "--device", "wrist", "--since", "today", "--json")
    assert server.json("/api/history?device=wrist&since=today") == want  # the same shape, the same numbers
    driver.get(server.url + "/device/wrist")
    rendered(driver)
    shown = driver.execute_script("return [...document.querySelectorAll('#totals .total')].map("
                                  "(e) => [e.dataset.activity, Number(e.dataset.seconds)])")  # fmt: skip
    assert dict(shown) == want["devices"]["wrist"]["seconds"] and len(shown) >= 1
    lanes = driver.execute_script("return [...document.querySelectorAll('#timeline .lane')].map("
                                  "(lane) => lane.querySelectorAll('.block').length)")  # fmt: skip
    assert lanes == [len(want["devices"]["wrist"]["episodes"])]  # the model's (a wearable sends no truth)
    assert driver.execute_script("return document.querySelectorAll('#days .day').length") == 7
    assert driver.execute_script("return document.querySelectorAll('#probs .prob').length") == 6
    assert "Hz" in driver.find_element("id", "health").text
    screenshot(driver, "web-wearer.png")


HOSTILE = (
    "<script>window.__pwned = 1</script>",
    '"><img src=x onerror="window.__pwned = 2">',
    "it's \"quoted\" & <b>bold</b>",
    "café-日本-😀-שלום",
    "x" * 10_000,
    "a/b?c=d#e%20f",
)


def test_hostile_names_and_values_render_as_text_and_run_nothing(broker, browser, tmp_path) -> None:
    db = tmp_path / "hostile.db"
    store = Store(Target.parse(str(db))).start()
    now = time.time()
    for k, device in enumerate(HOSTILE):
        label = "<img src=y onerror=\"window.__pwned = 3\">" if k == 0 else "SITTING"
        store.add_prediction(device, now - 5, label, 0.9, None, 1.28)
        store.add_episode(device, label, now - 60, now - 5, 0.9, 40)
    store.close()
    publisher = mqtt_client(broker.url)
    body = {"label": "<svg onload=\"window.__pwned = 4\">", "confidence": 0.5, "t": now,
            "probs": {"<script>window.__pwned = 5</script>": 0.5, "LAYING": 0.5}}  # fmt: skip
    publisher.publish("har/<img src=z onerror='window.__pwned=6'>/activity", json.dumps(body), qos=1,
                      retain=True).wait_for_publish(5)  # fmt: skip
    publisher.loop_stop()
    server = WebServer(db, "--broker", broker.url)
    try:
        browser.get(server.url + "/")
        rendered(browser)
        deadline = time.monotonic() + 10
        expected = {*HOSTILE, "<img src=z onerror='window.__pwned=6'>"}
        names: list[str] = []
        while time.monotonic() < deadline and set(names) != expected:
            names = browser.execute_script(NAMES)
            time.sleep(0.2)
        assert set(names) == expected
        badges = browser.execute_script("return [...document.querySelectorAll('.c-label .badge')].map("
                                        "(b) => b.textContent)")  # fmt: skip
        assert any("<svg onload" in b for b in badges) and any("<img src=y" in b for b in badges)
        clean(browser)
        for device in HOSTILE[:4] + HOSTILE[5:] + ("<img src=z onerror='window.__pwned=6'>",):
            browser.get(server.url + "/device/" + quote(device, safe=""))
            rendered(browser)
            assert browser.find_element("id", "device-id").text == device
            clean(browser)
        browser.get(server.url + "/device/" + quote(HOSTILE[4], safe=""))  # the 10,000-character id
        rendered(browser)
        assert browser.execute_script("return document.getElementById('device-id').textContent") == HOSTILE[4]
        clean(browser)
    finally:
        server.stop()


def clean(driver) -> None:
    """Nothing the data said ran: no flag set, no element it named, no alert."""
    from selenium.common.exceptions import NoAlertPresentException

    assert driver.execute_script("return window.__pwned === undefined")
    injected = driver.execute_script("return document.querySelectorAll('img, svg, b, script:not([src])')"
                                     ".length")  # fmt: skip
    assert injected == 0
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - reading it is the check


def test_a_token_link_lets_the_browser_in_and_nothing_else_does(browser, tmp_path) -> None:
    db = tmp_path / "h.db"
    store = Store(Target.parse(str(db))).start()
    store.add_prediction("wrist", time.time(), "WALKING", 0.9, None, 1.28)
    store.close()
    token = "a-long-secret-token"
    server = WebServer(db, "--token", token, host="0.0.0.0")
    try:
        browser.get(server.url + "/")
        assert "401" in browser.find_element("tag name", "body").text
        browser.get(server.url + "/?token=wrong-token-here")
        assert "401" in browser.find_element("tag name", "body").text
        browser.get(server.url + f"/?token={token}")
        rendered(browser)
        assert browser.current_url == server.url + "/"  # the token is off the address bar, in a cookie
        assert browser.execute_script(NAMES) == ["wrist"]
        assert server.get("/api/fleet")[0] == 401
        assert server.get("/api/fleet", {"Authorization": "Bearer wrong"})[0] == 401
        assert server.get("/api/fleet", {"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        server.stop()


def test_a_store_and_broker_that_are_down_are_banners_on_a_page_that_still_works(browser, tmp_path) -> None:
    from live_fixtures import free_port

    server = WebServer(tmp_path / "not-yet.db", "--broker", f"mqtt://127.0.0.1:{free_port()}")
    try:
        browser.get(server.url + "/")
        rendered(browser)
        deadline, shown = time.monotonic() + 15, []
        while time.monotonic() < deadline and len(shown) < 2:
            shown = browser.execute_script("return [...document.querySelectorAll('#banners .banner')]"
                                           ".map((b) => b.textContent)")  # fmt: skip
            time.sleep(0.2)
        assert any(b.startswith("store: no store at") for b in shown), shown
        assert any(b.startswith("broker: ") for b in shown), shown
        assert browser.find_element("id", "empty").is_displayed()
    finally:
        server.stop()
