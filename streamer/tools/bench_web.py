"""``harstream web`` with a fleet of 1,000 devices: how long the fleet page takes to first render in a
real browser (Debian's chromium, headless, through selenium: the ``test`` extra), and the server's
CPU while every device's prediction changes at the recognizer's pace. A benchmark, not a test:

    python3 -m streamer.tools.bench_web [--devices 1000] [--seconds 20]

It fills a temporary SQLite store (each device with a day of predictions at hop 64, its episodes)
and a private mosquitto (each device's retained activity and health, as ``--publish`` leaves them),
serves them with ``harstream web`` in a process of its own, and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from model.strict_json import dumps
from streamer.sinks.store import Store, Target
from streamer.tools.private_mosquitto import Mosquitto, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")
HOP_S = 64 / 50.0  # the shipped model's hop at --hop 64: one prediction per device every 1.28 s
BADGE = """const a = [...document.querySelectorAll('a.device')].find((x) => x.textContent === arguments[0]);
return a && a.closest('tr').querySelector('.badge').textContent;"""


def chromium_driver(width: int = 1400, height: int = 900) -> Any:
    """A headless chromium driven by selenium through chromium-driver (both from Debian)."""
    from selenium import webdriver  # the test extra: only this benchmark and the tests need it
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def cpu_s(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill_store(path: Path, devices: int, hours: float) -> int:
    """Each device: ``hours`` of predictions up to now (at HOP_S) and an episode per 10 minutes."""
    store = Store(Target.parse(str(path))).start()
    now, rows = time.time(), 0
    step = max(HOP_S, hours * 3600 / 400)  # at most 400 rows a device: seconds are credited the same
    for d in range(devices):
        device = f"wearer-{d:04d}"
        t = now - hours * 3600
        while t < now:
            label = ACTIVITIES[(d + int(t // 600)) % len(ACTIVITIES)]
            store.add_prediction(device, t, label, 0.9, None, step)
            rows += 1
            t += step
        for start in range(int(now - hours * 3600), int(now) - 600, 600):
            activity = ACTIVITIES[(d + start // 600) % len(ACTIVITIES)]
            store.add_episode(device, activity, start, start + 600, 0.9, 400)
    store.close(timeout=60)
    return rows


def publish_fleet(client: Any, devices: int, round_: int) -> None:
    """Every device's activity (retained, as ``--publish`` sends it), and its health now and then."""
    now = time.time()
    for d in range(devices):
        label = ACTIVITIES[(d + round_) % len(ACTIVITIES)]
        probs = {a: (0.9 if a == label else 0.02) for a in ACTIVITIES}
        body = {"label": label, "confidence": 0.9, "t": now, "probs": probs}
        client.publish(f"har/wearer-{d:04d}/activity", dumps(body), qos=0, retain=True)
        if round_ % 4 == 0:
            health = {"t": now, "rate_hz": 50.0, "model_hz": 50.0, "samples": 1000 * round_,
                      "windows": round_, "gaps": 0, "clock_jumps": 0, "dropped": {}}  # fmt: skip
            client.publish(f"har/wearer-{d:04d}/health", dumps(health), qos=0, retain=True)


def first_render_ms(driver: Any, url: str, rows: int, timeout: float = 60.0) -> float:
    """ms from navigation until the page's script drew the fleet (``rows`` rows)."""
    driver.get(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = driver.execute_script("return [document.body.dataset.rendered || null, "
                                    "document.querySelectorAll('#fleet tbody tr').length]")  # fmt: skip
        if got[0] and got[1] >= rows:
            return float(got[0])
        time.sleep(0.05)
    raise RuntimeError(f"the fleet page did not render {rows} rows within {timeout:g} s")


def measure_web(devices: int = 1000, seconds: float = 20.0, hours: float = 8.0) -> dict:
    import paho.mqtt.client as mqtt

    with tempfile.TemporaryDirectory(prefix="bench-web-") as folder, Mosquitto(Path(folder)) as broker:
        db = Path(folder) / "history.db"
        rows = fill_store(db, devices, hours)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        publish_fleet(client, devices, 0)
        port = free_port()
        command = [sys.executable, "-m", "streamer.cli.main", "web", "--store", str(db), "--broker",
                   broker.url, "--port", str(port)]  # fmt: skip
        server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        driver = None
        try:
            if "serving" not in (server.stderr.readline() if server.stderr else ""):
                raise RuntimeError("harstream web did not start")
            time.sleep(1.0)  # its first read of the store
            driver = chromium_driver()
            url = f"http://127.0.0.1:{port}/"
            renders = [first_render_ms(driver, url, devices) for _ in range(3)]
            idle0, wall0 = cpu_s(server.pid), time.monotonic()
            time.sleep(5.0)
            idle = 100 * (cpu_s(server.pid) - idle0) / (time.monotonic() - wall0)
            live0, wall0, sent = cpu_s(server.pid), time.monotonic(), 0
            while time.monotonic() - wall0 < seconds:  # every device's prediction, each hop
                publish_fleet(client, devices, sent + 1)
                sent += 1
                time.sleep(max(0.0, wall0 + sent * HOP_S - time.monotonic()))
            wall = time.monotonic() - wall0
            live = 100 * (cpu_s(server.pid) - live0) / wall
            label = ACTIVITIES[(0 + sent) % len(ACTIVITIES)]
            time.sleep(1.0)
            shown = driver.execute_script(BADGE, "wearer-0000")
        finally:
            if driver is not None:
                driver.quit()
            server.terminate()
            server.wait(10)
            client.loop_stop()
    return {"devices": devices, "store_rows": rows, "first_render_ms": round(statistics.median(renders)),
            "first_render_ms_all": [round(r) for r in renders], "server_cpu_percent_idle": round(idle, 1),
            "server_cpu_percent_live": round(live, 1), "live_messages_per_s": round(devices * sent / wall),
            "live_seconds": round(wall, 1),
            "page_kept_up": bool(shown and shown.endswith(label))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m streamer.tools.bench_web",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(measure_web(args.devices, args.seconds)))


if __name__ == "__main__":
    main()
