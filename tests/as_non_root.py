"""File permissions as an ordinary user meets them, also when the tests run as root (CI containers do).

Root ignores permission bits, so a chmod-ed file or folder stops nothing there. `install()` makes this Python
process check the owner's bits the way the kernel checks them for a non-root owner: `os.access`, `os.open`
(tempfile.mkstemp uses it), `open`/`io.open` (pathlib too), and creating, renaming or removing entries in a
folder (its w bit). Anything that is denied raises PermissionError(EACCES), like the kernel. It covers files
opened from Python, which is how camcaffe reads and writes (C libraries that open files themselves are not
covered: camcaffe checks `os.access` before handing a path to them).

`python -m tests.as_non_root ARGS...` runs `camcaffe ARGS...` with the checks installed."""

from __future__ import annotations

import builtins
import errno
import io
import os
import stat
import sys

_real = {"access": os.access, "open": os.open, "builtin_open": builtins.open, "io_open": io.open,
         "replace": os.replace, "rename": os.rename, "mkdir": os.mkdir, "unlink": os.unlink,
         "rmdir": os.rmdir}  # fmt: skip


def _bits(path) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _parent(path) -> str:
    return os.path.dirname(os.path.abspath(os.fsdecode(path))) or "."


def _deny(path) -> PermissionError:
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))


def owner_may(path, read: bool = False, write: bool = False, search: bool = False) -> bool:
    """What a non-root owner may do with an existing path (the owner's r, w and x bits)."""
    mode = _bits(path)
    if mode is None:
        return False
    return not (
        (read and not mode & stat.S_IRUSR)
        or (write and not mode & stat.S_IWUSR)
        or (search and not mode & stat.S_IXUSR)
    )


def _check_entry_change(path) -> None:
    """Creating, renaming or removing a folder entry needs w and x on the folder."""
    if not owner_may(_parent(path), write=True, search=True):
        raise _deny(path)


def _check_open(path, reading: bool, writing: bool, creating: bool) -> None:
    if isinstance(path, int):
        return
    if os.path.exists(path):
        if not owner_may(path, read=reading, write=writing):
            raise _deny(path)
    elif creating:
        _check_entry_change(path)


def _access(path, mode, *args, **kwargs) -> bool:
    if isinstance(path, int) or mode == os.F_OK or args or kwargs:
        return _real["access"](path, mode, *args, **kwargs)
    return owner_may(path, read=bool(mode & os.R_OK), write=bool(mode & os.W_OK), search=bool(mode & os.X_OK))


def _os_open(path, flags, *args, **kwargs):
    access = flags & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
    writing = access in (os.O_WRONLY, os.O_RDWR) or bool(flags & os.O_TRUNC)
    _check_open(path, access in (os.O_RDONLY, os.O_RDWR), writing, bool(flags & os.O_CREAT))
    return _real["open"](path, flags, *args, **kwargs)


def _open_checked(real):
    def checked_open(file, mode="r", *args, **kwargs):
        writing = any(c in mode for c in "wax+")
        _check_open(file, "r" in mode or "+" in mode, writing, writing)
        return real(file, mode, *args, **kwargs)

    return checked_open


def _entry_changing(real, *positions: int):
    def changed(*args, **kwargs):
        for position in positions:
            _check_entry_change(args[position])
        return real(*args, **kwargs)

    return changed


def install() -> None:
    os.access = _access
    os.open = _os_open
    builtins.open = io.open = _open_checked(_real["builtin_open"])
    os.replace = _entry_changing(_real["replace"], 0, 1)
    os.rename = _entry_changing(_real["rename"], 0, 1)
    os.mkdir = _entry_changing(_real["mkdir"], 0)
    os.unlink = _entry_changing(_real["unlink"], 0)
    os.rmdir = _entry_changing(_real["rmdir"], 0)


def install_with(monkeypatch) -> None:
    """install() for one test, undone after it (pytest's monkeypatch)."""
    for module, name in ((os, "access"), (os, "open"), (builtins, "open"), (io, "open"), (os, "replace"),
                         (os, "rename"), (os, "mkdir"), (os, "unlink"), (os, "rmdir")):  # fmt: skip
        monkeypatch.setattr(module, name, getattr(module, name))
    install()


if __name__ == "__main__":
    install()
    from camcaffe.cli import main

    sys.exit(main(sys.argv[1:]))
