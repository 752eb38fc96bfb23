"""Download a Medical Segmentation Decathlon task, check it and unpack it safely.

``python -m helpers.fetch Task09_Spleen [DEST]`` (or ``make data TASK=Task09_Spleen``) fetches
one of the ten MSD tasks from the address MONAI's ``DecathlonDataset`` uses, with the MD5
MONAI publishes for it, into ``DEST/<task>`` (default ``data/``), ready for ``open_dataset``:

- a progress bar; an interrupted download resumes where it stopped (an HTTP ``Range``
  request on the ``.part`` file), and a finished task is never fetched again;
- the MD5 is checked before anything is unpacked; a mismatch removes the download and says
  so (an HTML error page served instead of the archive is named as such);
- tar members are unpacked with tarfile's ``data`` filter into a temporary folder that is
  renamed into place: no member may leave the destination, macOS ``._`` files are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

MSD_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/{task}.tar"
#: The MD5 of each task's archive, as MONAI's ``DecathlonDataset`` publishes them.
MSD_MD5 = {
    "Task01_BrainTumour": "240a19d752f0d9e9101544901065d872",
    "Task02_Heart": "06ee59366e1e5124267b774dbd654057",
    "Task03_Liver": "a90ec6c4aa7f6a3d087205e23d4e6397",
    "Task04_Hippocampus": "9d24dba78a72977dbd1d2e110310f31b",
    "Task05_Prostate": "35138f08b1efaef89d7424d2bcc928db",
    "Task06_Lung": "8afd997733c7fc0432f71255ba4e52dc",
    "Task07_Pancreas": "4f7080cfca169fa8066d17ce6eb061e4",
    "Task08_HepaticVessel": "641d79e80ec66453921d997fbf12a29c",
    "Task09_Spleen": "410d4a301da4e5b2f6f86ec3ddba524e",
    "Task10_Colon": "bad7a188931dc2f6acf72b08eb6202d0",
}
#: Written into an unpacked task folder last: its presence means the task is complete.
COMPLETE = ".fetched"


class FetchError(ValueError):
    """A task that cannot be fetched: an unknown name, a failed download, a bad archive."""


def fetch_task(
    task: str,
    dest: str | os.PathLike[str] = "data",
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Download, check and unpack MSD ``task`` into ``dest/<task>``; return that folder.

    ``url`` and ``md5`` override the published address and checksum (a mirror, or a test
    server). A folder already marked complete is returned at once, without a download.
    """
    if task not in MSD_MD5:
        raise FetchError(f"unknown task {task!r}; the MSD tasks are: {', '.join(MSD_MD5)}")
    dest = Path(dest)
    folder = dest / task
    if (folder / COMPLETE).exists():
        return folder
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{task}.tar"
    part = dest / f"{task}.tar.part"
    if not archive.exists():  # the archive is renamed into place only once its MD5 matched
        download(url or MSD_URL.format(task=task), part, progress=progress)
        check_md5(part, md5 or MSD_MD5[task])
        os.replace(part, archive)
    unpack(archive, dest, task)  # an unpacking cut off before its end starts again
    archive.unlink()
    return folder


def download(url: str, part: Path, progress: bool = True, chunk: int = 1 << 20) -> None:
    """Append ``url``'s bytes to ``part`` from its current size on (HTTP ``Range``); a server
    that ignores the range sends everything again, and ``part`` starts over."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the file is already whole
            return
        raise FetchError(f"{url}: the server answered HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise FetchError(f"{url}: cannot download ({err})") from None
    with response:
        if response.status != 206:
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        with open(part, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.stem, disable=not progress
        ) as bar:
            error = None
            try:
                while block := response.read(chunk):
                    out.write(block)
                    bar.update(len(block))
            except OSError as err:
                error = err
            if error is not None or (total is not None and out.tell() < total):
                raise FetchError(
                    f"{url}: the download stopped at {out.tell():,} of {total or '?'} bytes"
                    f"{f' ({error})' if error else ''}; run the same command again to resume from {part}"
                )


def check_md5(path: Path, expected: str) -> None:
    """Raise :class:`FetchError` (and remove ``path``) unless its MD5 is ``expected``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() == expected:
        return
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    html = head.startswith((b"<!doctype html", b"<html", b"<?xml")) or b"<html" in head
    path.unlink()
    what = "an HTML page, not the archive (an error page of the server?)" if html else "not the archive"
    raise FetchError(
        f"{path}: MD5 {digest.hexdigest()} is not the published {expected}: the download is {what}. "
        "It was removed; nothing was unpacked."
    )


def unpack(archive: Path, dest: Path, task: str) -> None:
    """Unpack ``archive`` into ``dest``, checked member by member, through a temporary folder."""
    staging = dest / f".{task}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    root = staging.resolve()
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = Path(member.name)
                if name.name.startswith("._") or "__MACOSX" in name.parts:
                    continue
                target = (root / member.name).resolve()
                if root not in target.parents or member.islnk() or member.issym():
                    raise FetchError(f"{archive}: member {member.name!r} would be written outside {dest}")
                tar.extract(member, root, filter="data")
    except (tarfile.TarError, OSError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise FetchError(f"{archive}: cannot unpack ({err})") from None
    except FetchError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    unpacked = staging / task
    if not (unpacked / "dataset.json").exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise FetchError(f"{archive}: holds no {task}/dataset.json; is it an MSD task?")
    folder = dest / task
    shutil.rmtree(folder, ignore_errors=True)  # an earlier, incomplete unpacking
    os.replace(unpacked, folder)
    (folder / COMPLETE).write_text(f"{archive.name}\n")
    shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("task", help=f"one of: {', '.join(MSD_MD5)}")
    parser.add_argument("dest", nargs="?", default="data", help="parent folder (default: data)")
    parser.add_argument("--url", help="download from this address instead (a mirror)")
    parser.add_argument("--md5", help="the archive's MD5, with --url")
    args = parser.parse_args(argv)
    try:
        folder = fetch_task(args.task, args.dest, url=args.url, md5=args.md5)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.task}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
