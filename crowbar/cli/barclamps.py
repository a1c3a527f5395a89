"""`crowbar barclamps import DIR`: what the CLI reads and sends, checked before it sends anything.

The CLI reads what the server would read in a barclamp directory (barclamp.yml,
scripts/ROLE/NAME, and the ansible/ and puppet/ trees whole but for hidden entries; other files
under scripts/ stay behind), follows no symbolic link and reads no
special file inside the directory, and checks the server's limits first, so a barclamp the server
would refuse for its size is refused here in one line, without a large upload.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from crowbar.cli.client import CliError

# The server's limits (crowbar/barclamps/limits.py; a client imports nothing server-side, and
# tests/barclamps/test_hostile_barclamps.py keeps these equal to those).
MAX_YAML_BYTES = 256 * 1024
MAX_SCRIPT_BYTES = 1024 * 1024
MAX_FILES = 500
MAX_TOTAL_BYTES = 4 * 1024 * 1024
MAX_UPLOAD_BODY = 16 * 1024 * 1024


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None


def _refuse(path: Path, st: os.stat_result, wanted: str) -> CliError:
    what = "a symbolic link (not followed)" if stat.S_ISLNK(st.st_mode) else f"not {wanted}"
    return CliError(f"{path}: {what}")


def _listing(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError as exc:
        raise CliError(f"{directory}: {exc.strerror}") from None


def _read(path: Path, limit: int) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise CliError(f"{path}: not a regular file")
            data = f.read(limit + 1)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None
    if len(data) > limit:
        raise CliError(f"{path}: larger than the server's limit of {limit:,} bytes")
    nul = data.find(b"\0")
    if nul >= 0:  # a binary file; the server refuses NUL in any JSON string it is sent
        raise CliError(f"{path}: contains a NUL byte at offset {nul}: not a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def files_of(directory: Path) -> dict[str, str]:
    """barclamp.yml and scripts/ROLE/NAME of `directory` (relative path -> text)."""
    yml = directory / "barclamp.yml"
    st = _lstat(yml)
    if st is None:
        raise CliError(f"{yml}: no such file")
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(yml, st, "a regular file")
    found = [("barclamp.yml", yml, st.st_size, MAX_YAML_BYTES)]
    scripts = directory / "scripts"
    st = _lstat(scripts)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise _refuse(scripts, st, "a directory")
    for role in _listing(scripts) if st is not None else []:
        st = _lstat(role)
        if st is None or stat.S_ISREG(st.st_mode):
            continue  # not a role's directory (a README): the server would not read it
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(role, st, "a directory")
        for script in _listing(role):
            st = _lstat(script)
            if st is None or stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(script, st, "a regular file")
            found.append((f"scripts/{role.name}/{script.name}", script, st.st_size, MAX_SCRIPT_BYTES))
    for tree in ("ansible", "puppet"):  # crowbar/barclamps/files.py: TREES
        found += _tree(directory / tree, tree)
    if len(found) > MAX_FILES:
        raise CliError(f"{directory}: {len(found)} files; the server takes at most {MAX_FILES}")
    total = 0
    for _rel, path, size, limit in found:
        if size > limit:
            raise CliError(f"{path}: {size:,} bytes; the server takes at most {limit:,}")
        total += size
    if total > MAX_TOTAL_BYTES:
        raise CliError(f"{directory}: {total:,} bytes of files; the server takes at most {MAX_TOTAL_BYTES:,}")
    return {rel: _read(path, limit) for rel, path, _size, limit in found}


def _tree(path: Path, rel: str, depth: int = 1) -> list[tuple[str, Path, int, int]]:
    """Every regular file below `path` (a jig's tree), hidden entries skipped, no link followed."""
    st = _lstat(path)
    if st is None:
        return []
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, st, "a directory")
    if depth > 16:
        raise CliError(f"{path}: nested more than 16 directories deep")
    out = []
    for child in _listing(path):
        if child.name.startswith("."):
            continue
        st = _lstat(child)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            out += _tree(child, f"{rel}/{child.name}", depth + 1)
        elif stat.S_ISREG(st.st_mode):
            out.append((f"{rel}/{child.name}", child, st.st_size, MAX_SCRIPT_BYTES))
        else:
            raise _refuse(child, st, "a regular file or directory")
    return out


def upload_body(files: dict[str, str], source: str) -> bytes:
    """The JSON body of POST /barclamps, refused here if the server would refuse its size."""
    body = json.dumps({"files": files, "source": source}, ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_UPLOAD_BODY:
        raise CliError(f"{source}: the upload would be {len(body):,} bytes; the server takes at most "
                       f"{MAX_UPLOAD_BODY:,}")
    return body
