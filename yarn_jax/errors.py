"""The project's exceptions, and how a command reports them: one line naming the field, tensor or file."""

from __future__ import annotations

import argparse
import errno
import sys

from yarn_jax.platforms import skip_absent_tpu


class YarnJaxError(ValueError):
    """Base class of all errors yarn_jax raises about user input."""


class ConfigError(YarnJaxError):
    """A model or rope configuration is invalid or unsupported."""


class CheckpointError(YarnJaxError):
    """A checkpoint is missing tensors, has unexpected or mis-shaped tensors, or cannot be read."""


class AssetError(YarnJaxError):
    """A real-data asset (model or corpus) could not be fetched or converted."""


class OutputError(YarnJaxError):
    """An output path cannot be written (read-only, full, in use by another command)."""


class NumericsError(YarnJaxError):
    """A computation produced non-finite values (NaN/inf loss or perplexity)."""


class Interrupted(YarnJaxError):
    """A run stopped by a signal after saving what it could (exit code 128 + the signal's number)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind e (itself, or a cause/context: orbax's async writers wrap theirs)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and (e.filename is not None or e.errno is not None):
            return e
        e = e.__cause__ or e.__context__
    return None


def user_message(e: BaseException) -> str | None:
    """One line for a failure the user can act on (bad input, unwritable/full disk), else None (a bug:
    let the traceback show)."""
    if isinstance(e, YarnJaxError):
        return " ".join(str(e).split())
    ose = _os_error(e)
    if ose is not None:
        reason = ose.strerror or errno.errorcode.get(ose.errno or 0) or type(ose).__name__
        where = f"{ose.filename}: " if ose.filename else ""
        return f"{where}{reason}{' (disk full)' if ose.errno == errno.ENOSPC else ''}"
    return None


def report_failure(e: BaseException) -> int | None:
    """Print `error: <one line>` to stderr and return the exit code, or None when e is not a user error."""
    if isinstance(e, KeyboardInterrupt):  # a Ctrl-C that nothing saved for: one line, the shell's code
        print("error: interrupted (Ctrl-C); nothing more was saved", file=sys.stderr, flush=True)
        return 130
    msg = user_message(e)
    if msg is None:
        return None
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return getattr(e, "exit_code", 2)  # 3 for a failed conversion check (convert.verify)


def command(main):
    """Decorator of a command's main(): user errors and I/O failures become one `error: ...` line and exit
    code 2 (3 for a failed conversion check, 128 + signal for a run stopped by one, 130 for Ctrl-C);
    anything else — a bug — propagates with its traceback."""
    import functools

    @functools.wraps(main)
    def run(*args, **kwargs):
        skip_absent_tpu()
        try:
            return main(*args, **kwargs)
        except BaseException as e:
            code = report_failure(e)
            if code is None:
                raise
            return code

    return run


class CommandHelp(argparse.RawDescriptionHelpFormatter):
    """--help with the description as written and each valued flag's default after its text (not for
    on/off switches, nor where the text says itself what happens when it is unset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


class CommandParser(argparse.ArgumentParser):
    """argparse with its errors (unknown flag, invalid choice, missing value) as one-line ConfigErrors, and
    no abbreviations: `--length` is not taken for `--lengths` (a typo must not silently pick a setting)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message} (see --help)")
