"""``harstream download``: fetch, check and extract the original archives of the public datasets."""

from __future__ import annotations

import io
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Archive:
    url: str
    inner: str  # the zip inside the download that holds the data ("" when the download is it)
    marker: str  # a path that must exist once extracted
    usage: str  # what to run next


ARCHIVES = {
    "opportunity": Archive(
        "https://archive.ics.uci.edu/static/public/226/opportunity+activity+recognition.zip",
        "", "OpportunityUCIDataset/dataset/S1-ADL1.dat",
        "python train.py --config configs/opportunity_18.toml --data-dir {root}/OpportunityUCIDataset",
    ),
    "uci-har": Archive(
        "https://archive.ics.uci.edu/static/public/240/human+activity+recognition+using+smartphones.zip",
        "UCI HAR Dataset.zip", "UCI HAR Dataset/train/y_train.txt",
        'harstream replay "uci-har:{root}/UCI HAR Dataset:2"',
    ),
}


class DownloadError(Exception):
    """The archive could not be fetched or is not what it should be."""


def fetch(url: str, timeout_s: float = 30.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not fetch {url} ({reason}): is this machine online?") from None


def open_checked(data: bytes, what: str) -> zipfile.ZipFile:
    """A zip archive whose every member passes its CRC check."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        bad = archive.testzip()
    except zipfile.BadZipFile as error:
        raise DownloadError(f"{what} is not a valid zip archive ({error})") from None
    if bad is not None:
        raise DownloadError(f"{what} is corrupt: member {bad} fails its CRC check")
    return archive


def download(name: str, to: Path, url: str | None = None) -> Path:
    """Fetch dataset ``name`` into folder ``to``; returns the path that proves it is there."""
    if name not in ARCHIVES:
        raise DownloadError(f"unknown dataset {name!r} (one of {', '.join(ARCHIVES)})")
    spec = ARCHIVES[name]
    archive = open_checked(fetch(url or spec.url), url or spec.url)
    if spec.inner and spec.inner in archive.namelist():
        archive = open_checked(archive.read(spec.inner), spec.inner)
    to.mkdir(parents=True, exist_ok=True)
    for member in archive.infolist():  # refuse paths that would land outside the target folder
        target = (to / member.filename).resolve()
        if not target.is_relative_to(to.resolve()):
            raise DownloadError(f"refusing archive member {member.filename!r}: outside {to}")
    archive.extractall(to)
    marker = to / spec.marker
    if not marker.exists():
        shutil.rmtree(to / Path(spec.marker).parts[0], ignore_errors=True)
        raise DownloadError(f"the archive from {url or spec.url} has no {spec.marker}")
    return marker
