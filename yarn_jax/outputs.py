"""Where commands write, and how they never lose what they did not write.

- `atomic_write_text`: a temporary sibling unique to this process and call, then `os.replace` — two
  processes writing the same file never trip over each other's temporary.
- `check_disjoint`: a destination equal to, inside, or containing its source is refused.
- (`checkpoint.layout.check_replaceable`: `--overwrite` replaces an empty directory or a checkpoint
  yarn_jax recognises and nothing else.)
- `Staging`: a directory built beside its target (`.NAME.staging-XXXX`) and moved in only when complete;
  removed on failure; ones left by a killed run are reported and removed by the next run to the same
  target (it holds the target's lock, so no live writer owns them).
- `lock`: one advisory lock (`fcntl.flock`, `.NAME.lock` beside it) per run directory or destination; a
  second command on the same one is refused with the holder's pid. Remote paths (gs://...) are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from yarn_jax.errors import ConfigError, OutputError, user_message

log = logging.getLogger("yarn_jax")

STAGING_TAG = ".staging-"

# Besides weights, steps and the tokenizer files the checkpoint writers copy: what a checkpoint may hold.


def is_remote(path) -> bool:
    return "://" in os.fspath(path)


def write_error(path, e: OSError) -> OutputError:
    """An OSError met while writing `path`, as one line naming it (the OSError often names no file)."""
    return OutputError(f"{path}: cannot write ({user_message(e) if e.filename is None else e.strerror or e})")


def atomic_write_text(path: str | os.PathLike, text: str | bytes) -> None:
    """Write `text` (str or bytes) to `path` through a temporary sibling unique to this call, then
    os.replace: readers see the old file or the new one, never a part."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


@contextlib.contextmanager
def writing(path):
    """Report an OSError raised in the block as one line naming `path` (appends, streams)."""
    try:
        yield
    except OSError as e:
        raise write_error(path, e) from None


def close_after(close, path=None) -> None:
    """Call close() in a `finally`: an OSError names `path`; while another exception is propagating, a
    failure here is dropped — the first one is what went wrong and is what the user sees."""
    failing = sys.exc_info()[0] is not None
    try:
        if path is None:
            close()
        else:
            with writing(path):
                close()
    except Exception:
        if not failing:
            raise


def _real(path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def check_disjoint(src, dst, what: str = "destination") -> None:
    """Refuse a `dst` that is `src`, lies inside it, or contains it (symlinks resolved)."""
    if is_remote(src) or is_remote(dst):
        s, d = os.fspath(src).rstrip("/"), os.fspath(dst).rstrip("/")
        inside = lambda a, b: a == b or a.startswith(b + "/")  # noqa: E731
    else:
        s, d = _real(src), _real(dst)
        inside = lambda a, b: a == b or b in a.parents  # noqa: E731
    if s == d:
        raise ConfigError(f"{what} {dst} is the source itself; choose a new path")
    if inside(s, d):
        raise ConfigError(f"{what} {dst} contains the source {src}; writing there could destroy it — choose a "
                          "path outside the source")
    if inside(d, s):
        raise ConfigError(f"{what} {dst} lies inside the source {src}; choose a path outside the source")


def _epath(path):
    from etils import epath

    return epath.Path(path)


def is_link(p) -> bool:
    return not is_remote(p) and os.path.islink(os.fspath(p))


def remove_tree(path) -> None:
    """rmtree for local or etils paths."""
    if is_remote(path):
        _epath(path).rmtree()
    else:
        shutil.rmtree(os.fspath(path))


class Staging:
    """A directory built at `.NAME.staging-XXXX` beside `target`, moved into place by `commit()`; removed
    if the block fails. Enter it while holding the target's lock (`lock(target)`)."""

    def __init__(self, target):
        self.target = _epath(target)
        self.path = None

    def stale(self) -> list:
        """Staging directories of this target left by runs that died (call under the target's lock)."""
        parent = self.target.parent
        if not parent.exists():
            return []
        prefix = f".{self.target.name}{STAGING_TAG}"
        return sorted(c for c in parent.iterdir() if c.name.startswith(prefix))

    def __enter__(self):
        import uuid

        for old in self.stale():
            log.warning("removing %s, left by an earlier run to %s that did not finish", old, self.target)
            remove_tree(old)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.target.parent / f".{self.target.name}{STAGING_TAG}{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        return self.path

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.path is not None and self.path.exists():
            remove_tree(self.path)
        return False

    def commit(self, replace: bool = False):
        """Move the staged directory to the target (an existing target is removed only now, if `replace`)."""
        if self.target.exists():
            if not replace:
                raise ConfigError(f"{self.target}: appeared while this command ran; the result is kept at "
                                  f"{self.path}")
            remove_tree(self.target)
        self.path.rename(self.target)
        return self.target


class _Lock:
    def __init__(self, lock_file: Path, what: str, remove: bool):
        self.file, self.what, self.remove, self.fd = lock_file, what, remove, None

    def acquire(self) -> "_Lock":
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = _read_holder(self.file)
                raise OutputError(f"{self.what} is in use by another yarn_jax command ({holder}); wait for it to "
                                  "finish or choose another path") from None
            # the file may have been unlinked by a holder releasing it between our open and flock: retry
            try:
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        if self.remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.file)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "pid unknown"
    except OSError:
        return "pid unknown"


@contextlib.contextmanager
def lock(path, what: str | None = None, *, enabled: bool = True, run_dir: bool = False):
    """Hold an exclusive advisory lock on a run directory or destination for the block: the lock file is
    `.NAME.lock` beside `path` (so nothing is created in `path` itself), removed on release; after a kill
    it is left behind, unlocked, and reused. No-op for remote paths or enabled=False (e.g. processes other
    than 0 of a multi-process run, which do not write). run_dir=True: `path` itself must be a directory
    if it exists (a run directory; a destination's existing content is judged by its command)."""
    if not enabled or is_remote(path):
        yield None
        return
    p = _real(path)
    # a file where a directory must be: say so (mkdir would only say "File exists")
    for q in ((p,) if run_dir else ()) + tuple(p.parents):
        if q.exists():
            if not q.is_dir():
                raise OutputError(f"{path}: {'it' if q == p else q} is a file, not a directory")
            break
    p.parent.mkdir(parents=True, exist_ok=True)
    with _Lock(p.parent / f".{p.name}.lock", what or f"{path}", remove=True) as handle:
        yield handle


def build_once(target, build) -> Path:
    """`target` if it exists (a finished build), else `build(staging_dir)` and move the result into place
    (a concurrent builder of the same target waits for nothing: it is refused by the lock)."""
    target = Path(target)
    if target.exists():
        return target
    with lock(target, f"{target} (being built)"):
        if target.exists():
            return target
        staging = Staging(target)
        with staging as tmp:
            build(Path(tmp))
            staging.commit()
    return target
