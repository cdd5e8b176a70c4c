"""Reading the history store: what each wearer did between two times, as the store's own module.

The writer (:mod:`streamer.sinks.store`) and the readers share one schema; the readers live here, by
the store, so that the ``history`` command (:mod:`streamer.commands.history`) and the dashboard's
totals for today (:mod:`streamer.ui.today`) both ask the store, and no screen imports a command.
Every read opens the store read-only (:meth:`~streamer.sinks.store.Target.connect_readonly`), and
every failure is one line (:class:`~streamer.sinks.store.StoreError`). The web page
(:mod:`streamer.web.data`) reads its fleet and its wearers' days here too.
"""

from __future__ import annotations

import difflib
from typing import Any

from streamer.sinks.store import StoreError, Target, store_text


def read_history(target: Target, device: str | None = None, since: float | None = None,
                 until: float | None = None, truth: bool = False) -> dict:  # fmt: skip
    """``{"devices": {id: {"seconds": {activity: s}, "episodes": [...]}}}`` from the store; with
    ``truth``, each device also gets ``"truth"``: its predictions' true labels as ``[t, seconds, label]``."""
    # never writes: a read-only store, someone else's file
    return _reading(target, lambda connection: _read(connection, target, device, since, until, truth))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def known_devices(target: Target) -> list[str]:
    """Every device the store holds predictions or episodes of, sorted."""
    connection = target.connect_readonly()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT device FROM predictions UNION SELECT device FROM episodes")
        devices = sorted(str(row[0]) for row in cursor.fetchall())
        cursor.close()
        return devices
    except Exception as error:  # a locked or damaged file, a server that went away
        raise StoreError(f"cannot read the store {target.display}: {first_line(error)}") from None
    finally:
        connection.close()


def read_latest(target: Target) -> dict[str, dict]:
    """Every device's latest stored prediction, ``{id: {"label", "confidence", "t"}}`` (the web page's
    fleet: who is there, and when each was last heard)."""
    return _reading(target, lambda connection: _latest(connection, target))


def read_totals(target: Target, since: float | None = None, until: float | None = None,
                device: str | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """``{id: {activity: seconds}}``: :func:`read_history`'s time per activity without its episodes
    (the web page's fleet bars and a wearer's days)."""
    return _reading(target, lambda connection: _totals(connection.cursor(), target, device, since, until))


def has_device(target: Target, device: str) -> bool:
    """Whether the store holds a prediction or an episode of ``device`` (two index lookups)."""

    def look(connection: Any) -> bool:
        cursor = connection.cursor()
        for table in ("predictions", "episodes"):
            query = target.sql(f"SELECT 1 FROM {table} WHERE device = ? LIMIT 1")
            cursor.execute(query, (store_text(device),))
            if cursor.fetchone() is not None:
                return True
        return False

    return _reading(target, look)


def _reading(target: Target, read: Any) -> Any:
    """``read(connection)`` on a read-only connection; every failure is a one-line StoreError."""
    try:
        connection = target.connect_readonly()
    except StoreError:
        raise
    except Exception as error:
        raise StoreError(f"cannot read the store {target.display}: {first_line(error)}") from None
    try:
        return read(connection)
    except Exception as error:  # a locked or damaged file, a server that went away
        raise StoreError(f"cannot read the store {target.display}: {first_line(error)}") from None
    finally:
        connection.close()


def _latest(connection: Any, target: Target) -> dict[str, dict]:
    cursor = connection.cursor()
    cursor.execute("SELECT p.device, p.label, p.confidence, p.t FROM predictions p JOIN "
                   "(SELECT device, MAX(t) AS t FROM predictions GROUP BY device) m "
                   "ON p.device = m.device AND p.t = m.t ORDER BY p.device")  # fmt: skip
    out: dict[str, dict] = {}
    for device, label, confidence, t in cursor.fetchall():
        sure = None if confidence is None else round(float(confidence), 4)
        out[device] = {"label": label, "confidence": sure, "t": round(float(t), 3)}
    cursor.close()
    return out


def _totals(cursor: Any, target: Target, device: str | None, since: float | None,
            until: float | None) -> dict[str, dict[str, float]]:  # fmt: skip
    where, params = _where("t", "t", device, since, until)
    cursor.execute(target.sql(f"SELECT device, label, SUM(seconds) FROM predictions{where} "
                              "GROUP BY device, label ORDER BY device, label"), params)  # fmt: skip
    out: dict[str, dict[str, float]] = {}
    for dev, label, seconds in cursor.fetchall():
        out.setdefault(dev, {})[label] = round(float(seconds), 3)
    return out


def unknown_device(target: Target, device: str) -> str | None:
    """Why ``--device`` names no device of the store (one line, with the closest names), or None
    when the store knows it: a typo must not read as "no history in that time", exit 0."""
    devices = known_devices(target)
    if store_text(device) in devices:
        return None
    if not devices:
        return f"the store {target.display} holds no devices yet"
    close = difflib.get_close_matches(device, devices, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    shown = ", ".join(devices[:10]) + (f" and {len(devices) - 10} more" if len(devices) > 10 else "")
    return f"no device {device!r} in the store {target.display}: {hint}it knows {shown}"


def _where(column_from: str, column_to: str, device: str | None, since: float | None,
           until: float | None) -> tuple[str, list]:  # fmt: skip
    clauses, params = [], []
    if device is not None:
        clauses.append("device = ?")
        params.append(store_text(device))  # as the writer stored it (an id that is not UTF-8: escaped)
    if since is not None:
        clauses.append(f"{column_to} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column_from} < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _read(connection: Any, target: Target, device: str | None, since: float | None, until: float | None,
          truth: bool) -> dict:  # fmt: skip
    cursor = connection.cursor()
    devices: dict[str, dict] = {dev: {"seconds": seconds, "episodes": []}
                                for dev, seconds in _totals(cursor, target, device, since, until).items()}
    where, params = _where("start_t", "end_t", device, since, until)
    cursor.execute(target.sql(f"SELECT device, activity, start_t, end_t, confidence FROM episodes{where} "
                              "ORDER BY device, start_t"), params)  # fmt: skip
    for dev, activity, start, end, confidence in cursor.fetchall():
        entry = devices.setdefault(dev, {"seconds": {}, "episodes": []})
        sure = None if confidence is None else round(confidence, 4)
        entry["episodes"].append({"activity": activity, "start": round(start, 3), "end": round(end, 3),
                                  "seconds": round(end - start, 3), "confidence": sure})  # fmt: skip
    if truth:
        where, params = _where("t", "t", device, since, until)
        cursor.execute(target.sql(f"SELECT device, t, seconds, truth FROM predictions{where} "
                                  "ORDER BY device, t"), params)  # fmt: skip
        for dev, t, seconds, label in cursor.fetchall():
            devices.setdefault(dev, {"seconds": {}, "episodes": []}).setdefault("truth", []).append(
                [t, seconds, label])
    cursor.close()
    return {"devices": dict(sorted(devices.items()))}
