"""Downloading and unpacking dataset files: resumable, checksummed, with a progress bar.

A :class:`Source` is one file a benchmark needs: its public URL (or None where the file is
only available by hand, e.g. from a Google Drive link), its checksum when one is published,
and whether it is an archive to unpack into the data root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One downloadable (or hand-fetched) file of a benchmark."""

    filename: str
    url: str | None  # None: no scriptable URL; ``note`` says where to get it
    md5: str | None = None
    sha256: str | None = None
    unpack: bool = True  # archives are unpacked into the target directory
    subdir: str = ""  # target directory relative to the data root ('' = the data root)
    note: str = ""  # where to get it by hand / what it is

    @property
    def checksum(self) -> tuple[str, str] | None:
        """(algorithm, hex digest) when one is published."""
        if self.sha256:
            return "sha256", self.sha256
        if self.md5:
            return "md5", self.md5
        return None


def file_digests(path: str | Path, *algorithms: str) -> dict[str, str]:
    """Hex digests of a file under each hashlib algorithm, from one read."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            for h in hashes.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashes.items()}


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (SHA-256 by default)."""
    return file_digests(path, algorithm)[algorithm]


def verify(path: Path, source: Source) -> str | None:
    """Raise if ``path`` does not match the source's published checksum; returns its sha256."""
    expected = source.checksum
    algorithm, want = expected if expected is not None else ("sha256", None)
    digests = file_digests(path, *dict.fromkeys((algorithm, "sha256")))  # one read for both
    if want is not None:
        got = digests[algorithm]
        if got != want:
            raise DataError(
                f"{path} has {algorithm} {got}, but {source.filename} should have {want}. The file is corrupt, "
                f"truncated or a different version: delete it and download it again."
            )
    return digests["sha256"]


def fetch(url: str, dest: Path, on_progress: Callable[[int, int | None], None] | None = None,
          timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming from ``dest.part`` when the server allows ranges.

    ``on_progress(done_bytes, total_bytes_or_None)`` is called as data arrives. An
    interrupted download keeps its ``.part`` file; running again resumes it.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "clbench"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            os.replace(part, dest)
            return dest
        raise DataError(f"Downloading {url} failed: HTTP {exc.code} {exc.reason}. Check the URL (or --mirror) and try again.") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"Cannot reach {url} ({exc}). Check the network, or download the file by hand and pass "
                        f"it with --archive.") from None
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        done = have
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    if on_progress is not None:
                        on_progress(done, total)
        except (OSError, urllib.error.URLError) as exc:
            raise DataError(f"The download of {url} was interrupted after {done:,} bytes ({exc}). Run the same "
                            f"command again to resume from {part}.") from None
    if total is not None and done < total:
        raise DataError(f"The download of {url} stopped after {done:,} of {total:,} bytes. Run the same command "
                        f"again to resume from {part}.")
    os.replace(part, dest)
    return dest


def _inside(base: Path, name: str) -> bool:
    target = (base / name).resolve()
    return target == base.resolve() or base.resolve() in target.parents


def unpack(archive: Path, into: Path) -> None:
    """Unpack a .zip, .tar, .tar.gz/.tgz archive into ``into`` (members must stay inside it)."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                bad = [n for n in zf.namelist() if not _inside(into, n)]
                if bad:
                    raise DataError(f"{archive} contains paths outside the target folder (e.g. {bad[0]}); refusing to unpack it.")
                zf.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(into, filter="data")
                else:  # Python without extraction filters: check the member paths ourselves
                    bad = [m.name for m in tf.getmembers() if not _inside(into, m.name) or m.issym() or m.islnk()]
                    if bad:
                        raise DataError(f"{archive} contains links or paths outside the target folder (e.g. {bad[0]}); refusing to unpack it.")
                    tf.extractall(into)
        else:
            raise DataError(f"{archive} is neither a zip nor a tar archive. Delete it and download it again.")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"Cannot unpack {archive} ({type(exc).__name__}: {exc}). The archive is damaged: delete it and "
                        f"download it again.") from None


def install(source: Source, data_root: Path, archive: Path | None = None, mirror: str | None = None,
            keep_archive: bool = False, on_progress: Callable[[int, int | None], None] | None = None) -> dict:
    """Get one source into the data root: download (or take ``archive``), verify, unpack.

    Returns facts for the user: the file, its sha256, whether its checksum was verified.
    """
    target = data_root / source.subdir
    target.mkdir(parents=True, exist_ok=True)
    if archive is None:
        url = source.url
        if mirror:
            url = mirror.rstrip("/") + "/" + source.filename
        if url is None:
            raise DataError(f"{source.filename} has no direct download link. {source.note} Then run this command "
                            f"again with --archive /path/to/{source.filename}.")
        archive = fetch(url, (target if not source.unpack else data_root) / source.filename, on_progress)
        downloaded = True
    else:
        archive = Path(archive).expanduser()
        if not archive.is_file():
            raise DataError(f"--archive {archive} does not exist.")
        downloaded = False
    try:
        sha = verify(archive, source)
    except DataError:
        if downloaded:
            archive.unlink(missing_ok=True)
        raise
    if source.unpack:
        unpack(archive, target)
        if downloaded and not keep_archive:
            archive.unlink(missing_ok=True)
    elif not downloaded and archive.resolve() != (target / source.filename).resolve():
        shutil.copyfile(archive, target / source.filename)
    return {"file": source.filename, "sha256": sha, "verified": source.checksum is not None,
            "into": str(target)}
