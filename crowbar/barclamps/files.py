"""A barclamp's files, as text, from a directory on the server or from an upload, checked before
anything parses them.

A barclamp is `barclamp.yml`, `scripts/ROLE/NAME` (NAME: the role's scripts, run in name order),
and the trees of the configuration-tool jigs: `ansible/...` (playbooks `ansible/ROLE.yml`, ordinary
Ansible roles under `ansible/roles/`) and `puppet/...` (`puppet/manifests/ROLE.pp`, modules under
`puppet/modules/`), read whole, at any depth, hidden entries (`.git`, `.gitignore`) skipped.
Reading a directory never follows a symbolic link below the directory itself (each name is opened
relative to its parent's descriptor with O_NOFOLLOW, so nothing can lead outside the directory, not
even a link swapped in while it is read) and refuses anything but plain files and directories where
it looks; other files under scripts/ (a README beside the role directories, a subdirectory of one)
are left alone, as before. An upload is held to the same layout, strictly: any other path is refused.
Either way: sizes and counts within crowbar/barclamps/limits.py, text in UTF-8 without NUL, script
names the script jig can run everywhere. Every error names the file.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from crowbar.barclamps.limits import (MAX_FILES, MAX_SCRIPT_BYTES, MAX_SCRIPT_NAME, MAX_TOTAL_BYTES,
                                      MAX_YAML_BYTES)
from crowbar.errors import BarclampError

YML = "barclamp.yml"
SCRIPTS = "scripts"
TREES = ("ansible", "puppet")  # read whole for the ansible and puppet jigs (crowbar/jigs/)
# What the script jig can run locally, over SSH and through the discovery agent's busybox tar:
# printable ASCII (a plain tar header; no control characters in logs), not hidden (the jig keeps its
# state in .crowbar beside the scripts), no '/'.
SCRIPT_NAME = re.compile(r"[\x20-\x7e]+")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def printable(text) -> str:
    """`text` for an error message: a control character or a lone surrogate (from a file name that
    is not UTF-8) escaped, so that the message can be encoded and printed on one line."""
    text = str(text)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def fail(where: Path | str, message: str, field: str = "barclamp") -> BarclampError:
    return BarclampError(printable(f"{where}: {message}"), field=field)


def script_name_problem(name: str) -> str | None:
    """Why the script jig could not run a script of this name, or None."""
    if not SCRIPT_NAME.fullmatch(name):
        return "script names are printable ASCII (letters, digits, punctuation, spaces)"
    if name.startswith("."):
        return "script names may not start with '.' (hidden files; the jig's own state is .crowbar)"
    if len(name) > MAX_SCRIPT_NAME:
        return f"script names are at most {MAX_SCRIPT_NAME} characters"
    return None


class _Budget:
    """Counts files and bytes against the limits as they are found."""

    def __init__(self, root: Path | str, field: str):
        self.root, self.field = root, field
        self.files = self.bytes = 0

    def count(self, rel: str) -> None:
        self.files += 1
        if self.files > MAX_FILES:
            raise fail(self.root, f"more than {MAX_FILES} files (at {rel})", self.field)

    def add(self, rel: str, size: int) -> None:
        limit = MAX_YAML_BYTES if rel == YML else MAX_SCRIPT_BYTES
        if size > limit:
            raise fail(f"{self.root}/{rel}", f"{size:,} bytes: larger than the limit of {limit:,}", self.field)
        self.bytes += size
        if self.bytes > MAX_TOTAL_BYTES:
            raise fail(self.root, f"more than {MAX_TOTAL_BYTES:,} bytes of files in all (at {rel})", self.field)


def _text(where: str, data: bytes | str, field: str) -> str:
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise fail(where, f"not text: a lone surrogate at character {exc.start}", field) from None
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise fail(where, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", field) from None
    if "\0" in text:
        raise fail(where, f"not text: a NUL character at offset {text.index(chr(0))}", field)
    return text


def _check_script(where: str, rel: str, field: str) -> None:
    problem = script_name_problem(PurePosixPath(rel).name)
    if problem:
        raise fail(where, problem, field)


# -- a directory on the server -------------------------------------------------------------------
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link (never followed)"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def tree_path_problem(rel: str) -> str | None:
    """Why a file path under a jig's tree (TREES) can not be stored and unpacked on a node, or None."""
    for part in PurePosixPath(rel).parts:
        problem = script_name_problem(part)
        if problem:
            return problem.replace("script names", "file and directory names")
    return None


class _Walk:
    def __init__(self, root: Path):
        self.root = root
        self.budget = _Budget(root, "path")

    def fail(self, rel: str, message: str) -> BarclampError:
        return fail(self.root / rel, message, "path")

    def lstat(self, dir_fd: int, rel: str) -> os.stat_result | None:
        try:
            return os.stat(PurePosixPath(rel).name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.fail(rel, f"cannot read: {exc.strerror}") from None

    def open(self, dir_fd: int, rel: str, flags: int) -> int:
        try:
            return os.open(PurePosixPath(rel).name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self.fail(rel, "changed while it was read (now a symbolic link or not a directory)") from None
            raise self.fail(rel, f"cannot read: {exc.strerror}") from None

    def read_file(self, dir_fd: int, rel: str, st: os.stat_result) -> str:
        self.budget.add(rel, st.st_size)
        limit = MAX_YAML_BYTES if rel == YML else MAX_SCRIPT_BYTES
        fd = self.open(dir_fd, rel, _FILE_FLAGS)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self.fail(rel, "changed while it was read (no longer a regular file)")
            chunks, size = [], 0
            while chunk := os.read(fd, 1 << 16):
                size += len(chunk)
                if size > limit:
                    raise self.fail(rel, f"grew beyond the limit of {limit:,} bytes while it was read")
                chunks.append(chunk)
        except OSError as exc:
            raise self.fail(rel, f"cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)
        return _text(str(self.root / rel), b"".join(chunks), "path")

    def entries(self, dir_fd: int, rel: str) -> list[str]:
        try:
            with os.scandir(dir_fd) as it:
                names = []
                for entry in it:
                    names.append(entry.name)
                    self.budget.count(f"{rel}/{entry.name}")
        except OSError as exc:
            raise self.fail(rel, f"cannot list: {exc.strerror}") from None
        return sorted(names)

    @contextmanager
    def opened(self, dir_fd: int, rel: str) -> Iterator[int]:
        fd = self.open(dir_fd, rel, _DIR_FLAGS)
        try:
            yield fd
        finally:
            os.close(fd)

    def children(self, dir_fd: int, rel: str, wanted: Callable[[int], bool], ignored: Callable[[int], bool],
                 rule: str) -> Iterator[tuple[str, os.stat_result]]:
        """The entries of a directory that are `wanted` (by their mode, not followed), in name order;
        `ignored` ones are skipped and any other is refused with `rule`."""
        for name in self.entries(dir_fd, rel):
            child = f"{rel}/{name}"
            st = self.lstat(dir_fd, child)
            if st is None or ignored(st.st_mode):
                continue
            if not wanted(st.st_mode):
                raise self.fail(child, f"{_kind(st.st_mode)}: {rule}")
            yield child, st

    def gather(self, root_fd: int) -> dict[str, str]:
        st = self.lstat(root_fd, YML)
        if st is None:
            raise fail(self.root / YML, "no such file", "path")
        if not stat.S_ISREG(st.st_mode):
            raise self.fail(YML, f"{_kind(st.st_mode)}, not a regular file")
        self.budget.count(YML)
        files = {YML: self.read_file(root_fd, YML, st)}
        st = self.lstat(root_fd, SCRIPTS)
        if st is not None:
            self.scripts(root_fd, st, files)
        for tree in TREES:
            st = self.lstat(root_fd, tree)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise self.fail(tree, f"{_kind(st.st_mode)}, not a directory")
            with self.opened(root_fd, tree) as tree_fd:
                self.tree(tree_fd, tree, files, depth=1)
        return files

    def scripts(self, root_fd: int, st: os.stat_result, files: dict[str, str]) -> None:
        if not stat.S_ISDIR(st.st_mode):
            raise self.fail(SCRIPTS, f"{_kind(st.st_mode)}, not a directory of role directories")
        with self.opened(root_fd, SCRIPTS) as scripts_fd:
            # a README beside the role directories is not read; anything but a directory or file is refused
            for rel, _ in self.children(scripts_fd, SCRIPTS, stat.S_ISDIR, stat.S_ISREG,
                                        "scripts/ holds one plain directory per role"):
                with self.opened(scripts_fd, rel) as role_fd:
                    # a subdirectory of a role's directory is not a script (as before)
                    for script, st in self.children(role_fd, rel, stat.S_ISREG, stat.S_ISDIR,
                                                     "a script must be a regular file"):
                        _check_script(str(self.root / script), script, "path")
                        files[script] = self.read_file(role_fd, script, st)

    def tree(self, dir_fd: int, rel: str, files: dict[str, str], depth: int) -> None:
        """Every regular file below `rel`, recursively (hidden entries skipped, nothing followed)."""
        if depth > 16:
            raise self.fail(rel, "nested more than 16 directories deep")
        for name in self.entries(dir_fd, rel):
            if name.startswith("."):
                continue
            child = f"{rel}/{name}"
            st = self.lstat(dir_fd, child)
            if st is None:
                continue
            problem = tree_path_problem(name)
            if problem:
                raise self.fail(child, problem)
            if stat.S_ISDIR(st.st_mode):
                with self.opened(dir_fd, child) as fd:
                    self.tree(fd, child, files, depth + 1)
            elif stat.S_ISREG(st.st_mode):
                files[child] = self.read_file(dir_fd, child, st)
            else:
                raise self.fail(child, f"{_kind(st.st_mode)}: only plain files and directories")


def from_directory(path: Path | str) -> tuple[Path, dict[str, str]]:
    """The barclamp directory `path` names (the directory or its barclamp.yml) and its files.

    `path` itself may pass through symbolic links (it is what the admin named); nothing below it does.
    """
    given = str(path)
    try:
        given.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(given, "not a path (not UTF-8)", "path") from None
    if not given or "\0" in given:
        raise fail(repr(given), "not a path", "path")
    path = Path(given)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise fail(path, "no such file", "path") from None
    except OSError as exc:
        raise fail(path, f"cannot read: {exc.strerror}", "path") from None
    if stat.S_ISDIR(st.st_mode):
        root = path
    elif path.name == YML:
        root = path.parent
    else:
        raise fail(path, f"not a barclamp (a directory with a {YML}, or the {YML} itself)", "path")
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise fail(root, f"cannot read: {exc.strerror}", "path") from None
    try:
        return root, _Walk(root).gather(root_fd)
    finally:
        os.close(root_fd)


# -- an upload -----------------------------------------------------------------------------------
def from_upload(files: Mapping[str, str], where: Path) -> dict[str, str]:
    """Check the files a client sent (relative path -> text); `where` names them in errors."""
    budget = _Budget(where, "files")
    out: dict[str, str] = {}
    for rel in sorted(files):
        shown = repr(rel) if len(rel) <= 200 else repr(rel[:200]) + "..."
        p = PurePosixPath(rel)
        if not rel or "\0" in rel or p.is_absolute() or p.as_posix() != rel or ".." in p.parts:
            raise fail(where, f"file path {shown} must be relative and plain (no '..', '.', '//' or "
                       "trailing '/')", "files")
        budget.count(rel)
        in_tree = len(p.parts) >= 2 and p.parts[0] in TREES
        if rel != YML and not (len(p.parts) == 3 and p.parts[0] == SCRIPTS) and not in_tree:
            # This also refuses a name used for a file and a directory ("scripts/r" and "scripts/r/x").
            raise fail(where, f"file path {shown}: a barclamp is {YML}, {SCRIPTS}/ROLE/NAME, "
                       f"{TREES[0]}/... and {TREES[1]}/..., nothing else", "files")
        if in_tree and (tree_path_problem(rel) or any(q.startswith(".") for q in p.parts)
                        or len(p.parts) > 17 or any(rel.startswith(o + "/") for o in out)):
            raise fail(where, f"file path {shown}: {tree_path_problem(rel) or 'not a plain file path'}", "files")
        target = str(where / rel)
        text = _text(target, files[rel], "files")
        budget.add(rel, len(text.encode("utf-8")))
        if rel != YML and not in_tree:
            _check_script(target, rel, "files")
        out[rel] = text
    if YML not in out:
        raise fail(where / YML, "missing from the upload", "files")
    return out
