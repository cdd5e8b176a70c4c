"""The docs state what ``python -m streamer.tools.figures`` prints (issue 21: figures drift).

Every number marked ``<!-- figure: NAME.KEY -->`` in README.md and docs/*.md must equal the value
docs/figures.json stores for it, as the docs round it; every stored value must be stated somewhere;
and the figures cheap enough for every run (``ci=True`` in streamer/tools/figures.py: MFLOP, the HAPT
data, the ONNX export) are recomputed here. The others (the replays, the agreement table,
evaluation, calibration: a few minutes in all)
are recomputed by ``python -m streamer.tools.figures --check``, not by this suite.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from streamer.tools.figures import BY_NAME, FIGURES, FIGURES_JSON, ROOT, Workspace, compute, stored

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A number, an optional percent sign or unit, closing emphasis or quotes, then the marker.
MARKER = re.compile(r"(?P<number>-?\d[\d,]*(?:\.\d+)?)(?P<unit>\s?%|\s?s\b|\s?MFLOP)?[*`\"]*\s*"
                    r"<!-- figure: (?P<name>[^ ]+) -->")  # fmt: skip


def markers() -> list[tuple[str, str, str, str]]:
    """(where, number as written, unit, NAME.KEY) of every marker in the pages; a marker with no
    number before it is given the number ``""``, which no figure formats to."""
    found = []
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{page.relative_to(ROOT)}:{n}"
            found += [(where, m["number"], (m["unit"] or "").strip(), m["name"])
                      for m in MARKER.finditer(line)]  # fmt: skip
            if line.count("<!-- figure:") != len(MARKER.findall(line)):
                found.append((where, "", "", "(a marker with no number before it)"))
    return found


def as_written(value: float | int, number: str, unit: str) -> str:
    """``value`` formatted as the docs wrote ``number``: its decimals, thousands commas, percent."""
    value = value * 100 if unit == "%" else value
    decimals = len(number.split(".")[1]) if "." in number else 0
    return f"{value:{',' if ',' in number else ''}.{decimals}f}"


def stored_value(name: str) -> float | int | None:
    figure, _, key = name.partition(".")
    return stored().get(figure, {}).get("values", {}).get(key)


def test_figures_json_is_strict_json_with_a_date_and_commands_for_every_figure():
    text = FIGURES_JSON.read_text(encoding="utf-8")
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{FIGURES_JSON} holds {c}: not JSON"))
    figures = stored()
    assert list(figures) == [f.name for f in FIGURES], "run python -m streamer.tools.figures --write"
    for name, figure in figures.items():
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", figure["date"]), name
        assert figure["commands"] == list(BY_NAME[name].commands), f"{name}: run --write --only {name}"
        assert figure["values"], name


def test_every_marked_number_is_the_stored_figure():
    found = markers()
    assert found, "no <!-- figure: NAME.KEY --> markers in the docs"
    wrong = []
    for where, number, unit, name in found:
        value = stored_value(name)
        if value is None:
            wrong.append(f"{where}: {name} is not a figure in {FIGURES_JSON.name}")
        elif (now := as_written(value, number, unit)) != number:
            wrong.append(f"{where}: {name} says {number}{unit}, the figure is {now}{unit}")
    assert not wrong, "\n".join(wrong)


def test_every_stored_figure_is_stated_in_the_docs():
    marked = {name for *_, name in markers()}
    missing = [f"{figure}.{key}" for figure, entry in stored().items() for key in entry["values"]
               if f"{figure}.{key}" not in marked]  # fmt: skip
    assert not missing, "stored but stated nowhere: " + ", ".join(missing)


def test_the_format_check_has_teeth():
    assert as_written(0.9485038, "0.9485", "") == "0.9485"
    assert as_written(0.9197, "92", "%") == "92"
    assert as_written(6467.84, "6,467.84", "") == "6,467.84"
    assert as_written(272, "264", "") != "264"


@pytest.mark.parametrize("name", [f.name for f in FIGURES if f.ci])
def test_the_cheap_figures_recompute_to_the_stored_values(name: str, tmp_path: Path):
    assert compute([name], Workspace(tmp_path))[name] == stored()[name]["values"]
