"""Checks on what a client sends a predictor, applied inside the predictor before the model sees it.

What coglet 0.23.1 hands run() (verified through the real server, see tests/test_hostile_inputs.py):
- a file input given as an http(s) URL or a data: URI arrives as a `cog.Path` to a temporary file that
  coglet itself downloaded or decoded; any other string (`/etc/passwd`, `../x`, `file:///…`, `ftp://…`)
  arrives as the plain `str` the client sent, and opening it would read the server's own files;
- a JSON number such as `1.0` or `-0.0` for an `int` input arrives as a float, and bounds are compared
  in floating point, so 2^63 passes `le=2**63 - 1`;
- a download or decode that fails is reported as `Input validation error: <exception text>`, which
  does not say which input it was.

`@checked_inputs` on run() refuses the first (naming the input), turns integral floats into ints and
checks integer bounds exactly. `install_download_hooks()` makes coglet's downloads bounded in size and
turns their failures into errors that run() reports with the input's name.
"""

import functools
import inspect
import math
import os
import pathlib
import re
import shutil
import tempfile
import time
import types
import typing

from cog.input import FieldInfo

MAX_DOWNLOAD = int(os.environ.get("COGKIT_MAX_FILE_BYTES") or 1 << 30)  # one file input, bytes
DOWNLOAD_DEADLINE = float(os.environ.get("COGKIT_DOWNLOAD_TIMEOUT") or 600)  # one file input, seconds
ACCEPTED = "send an http(s) URL or a data: URI"


class InputError(ValueError):
    """A client's input cannot be used; the message names the input and the rule."""


def clip(value: str, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"


# ------------------------------------------------------------------------------ file inputs


class RefusedFile(pathlib.PosixPath):
    """Stands in for a file coglet could not fetch, so that run() reports why with the input's name
    (coglet's own message names neither). It points nowhere: opening it fails."""

    def __new__(cls, source: str, reason: str):
        obj = super().__new__(cls, "/nonexistent/cogkit-refused-input")
        obj.source, obj.reason = source, reason
        return obj

    def __init__(self, source: str, reason: str):  # PosixPath takes the path in __new__
        pass


def file_input(name: str, value):
    """The local path of a file coglet received for input `name`, or InputError. Only a `Path` that
    coglet made by downloading or decoding what the client sent is accepted; a string is something
    the client named, which this server never opens."""
    if value is None:
        return None
    if isinstance(value, RefusedFile):
        raise InputError(f"{name}: {value.reason}")
    if isinstance(value, str):
        raise InputError(f"{name}: {why_not_a_file(value)}")
    if not isinstance(value, pathlib.Path):
        raise InputError(f"{name}: expected a file ({ACCEPTED}), got {type(value).__name__}")
    # coglet writes what it fetched to a fresh temporary file; anything else did not come from it.
    path = pathlib.Path(value)
    if path.parent != pathlib.Path(tempfile.gettempdir()) or path.is_symlink() or not path.is_file():
        raise InputError(f"{name}: not a file this server received; {ACCEPTED}")
    return value


def why_not_a_file(text: str) -> str:
    """What is wrong with a string given for a file input (shared with the gateway's checks)."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and scheme.group(1).lower() not in ("http", "https"):
        return f"{scheme.group(1).lower()}:// URLs are not accepted ({clip(text)}); {ACCEPTED}"
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    if not text:
        return f"empty; {ACCEPTED}"
    if scheme and scheme.group(1).lower() == "data":
        return data_uri_problem(text) or f"the data: URI could not be decoded; {ACCEPTED}"
    if scheme and scheme.group(1).lower() in ("http", "https"):
        return f"could not download {clip(text)}"
    return f"a local path or bare name is not accepted ({clip(text)}); this server only reads files " \
           f"sent to it: {ACCEPTED}"


def data_uri_problem(uri: str) -> str | None:
    """Why `uri` is not a well-formed data: URI (RFC 2397), or None."""
    header, comma, payload = uri.partition(",")
    if not comma:
        return "the data: URI has no comma; expected data:[<media type>][;base64],<data>"
    if ";base64" in header.lower():
        import binascii
        import base64

        try:
            base64.b64decode(payload.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "the data: URI's base64 payload is not valid base64"
    return None


# ------------------------------------------------------------------------------ integers


def integer_input(name: str, value, ge=None, le=None):
    """An int input as an int: an integral float (1.0, -0.0, 2.0**63) becomes that integer, any other
    float is refused; bounds are compared exactly (coglet compares them as floats)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InputError(f"{name}: {value!r} is not an integer")
        value = int(value)
    if isinstance(value, int):
        if ge is not None and value < ge:
            raise InputError(f"{name}: {value} is less than the minimum of {int(ge)}")
        if le is not None and value > le:
            raise InputError(f"{name}: {value} is greater than the maximum of {int(le)}")
    return value


# ------------------------------------------------------------------------------ the decorator


def _kind(annotation) -> str | None:
    """'file' for cog.Path (optional or not), 'int' for int, else None."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    options = [a for a in args if a is not type(None)] or [annotation]
    if len(options) != 1:
        return None
    option = options[0]
    if isinstance(option, type) and issubclass(option, pathlib.PurePath):
        return "file"
    if option is int:
        return "int"
    return None


class InputChecks:
    """The checks of one run(): a callable object, not a function, because cog's inspector finds a
    decorated run() by walking closures and refuses one that holds two functions."""

    def __init__(self, run):
        self.signature = inspect.signature(run)
        hints = typing.get_type_hints(run)
        self.checks = {}
        for name, param in self.signature.parameters.items():
            kind = _kind(hints.get(name))
            if kind == "file":
                self.checks[name] = file_input
            elif kind == "int":
                ge, le = getattr(param.default, "ge", None), getattr(param.default, "le", None)
                self.checks[name] = functools.partial(_integer, ge=ge, le=le)

    def __call__(self, args, kwargs):
        bound = self.signature.bind(*args, **kwargs)
        # coglet leaves out the inputs a client did not send when run() is decorated: fill in the
        # defaults that Input() declares, as it does for an undecorated run()
        bound.apply_defaults()
        for name, value in bound.arguments.items():
            if isinstance(value, FieldInfo):
                bound.arguments[name] = value.default
        for name, check in self.checks.items():
            if name in bound.arguments:
                bound.arguments[name] = check(name, bound.arguments[name])
        return bound.args, bound.kwargs


def checked_inputs(run):
    """Decorate a predictor's run(): every file input goes through file_input() and every int input
    through integer_input() (with the bounds its Input() declares) before run's body starts. The
    signature, and whether run is a generator or a coroutine, stay what coglet inspects."""
    check = InputChecks(run)

    if inspect.isasyncgenfunction(run):
        @functools.wraps(run)
        async def wrapper(*args, **kwargs):
            args, kwargs = check(args, kwargs)
            async for item in run(*args, **kwargs):
                yield item
    elif inspect.iscoroutinefunction(run):
        @functools.wraps(run)
        async def wrapper(*args, **kwargs):
            args, kwargs = check(args, kwargs)
            return await run(*args, **kwargs)
    elif inspect.isgeneratorfunction(run):
        @functools.wraps(run)
        def wrapper(*args, **kwargs):
            args, kwargs = check(args, kwargs)
            return (yield from run(*args, **kwargs))
    else:
        @functools.wraps(run)
        def wrapper(*args, **kwargs):
            args, kwargs = check(args, kwargs)
            return run(*args, **kwargs)
    return wrapper


def _integer(name, value, ge=None, le=None):
    return integer_input(name, value, ge, le)


# ------------------------------------------------------------------------------ coglet's downloads


def install_download_hooks() -> None:
    """Inside coglet's worker: bound each downloaded file input's size, and turn a failed download
    or a malformed data: URI into a RefusedFile that run() reports with the input's name. Idempotent."""
    from cog import types as cog_types

    if getattr(cog_types.URLPath.convert, "cogkit", False):
        return
    original_validate = cog_types.Path.validate.__func__

    def validate(cls, value):
        if isinstance(value, str) and value[:5].lower() == "data:" and (problem := data_uri_problem(value)):
            return RefusedFile(value, problem)
        try:
            return original_validate(cls, value)
        except Exception as e:  # noqa: BLE001 - any failure to parse what the client sent is its input's fault
            if isinstance(value, str):
                return RefusedFile(value, data_uri_problem(value) or describe_fetch_error(value, e))
            raise

    def convert(self):
        if self._path is None:
            try:
                self._path = download(self)
            except InputError as e:
                return RefusedFile(self.source, str(e))
            except Exception as e:  # noqa: BLE001 - network and decoding failures: the input's fault
                return RefusedFile(self.source, describe_fetch_error(self.source, e))
        return self._path

    convert.cogkit = True
    cog_types.Path.validate = classmethod(validate)
    cog_types.URLPath.convert = convert


def download(url_path) -> pathlib.Path:
    """Copy coglet's file object (an HTTP response or a decoded data: URI) to a temporary file: at
    most MAX_DOWNLOAD bytes, within DOWNLOAD_DEADLINE seconds. Each read returns what has arrived
    (read1), and coglet gives each wait on the network 10 s, so a server that sends a byte now and
    then is cut off at the deadline rather than holding the prediction for ever."""
    from cog import types as cog_types

    fd, name = tempfile.mkstemp(suffix=url_path.filename)
    copied, deadline = 0, time.monotonic() + DOWNLOAD_DEADLINE
    read = getattr(url_path.fileobj, "read1", None) or url_path.fileobj.read
    try:
        with os.fdopen(fd, "wb") as dest:
            while chunk := read(1 << 20):
                copied += len(chunk)
                if copied > MAX_DOWNLOAD:
                    raise InputError(f"the file is larger than the limit of {MAX_DOWNLOAD} bytes "
                                     "(COGKIT_MAX_FILE_BYTES)")
                if time.monotonic() > deadline:
                    raise InputError(f"could not download {clip(url_path.source)}: not complete after "
                                     f"{DOWNLOAD_DEADLINE:.0f} s (COGKIT_DOWNLOAD_TIMEOUT)")
                dest.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return cog_types.Path(name)


def describe_fetch_error(source: str, e: Exception) -> str:
    """One line for a download that failed: what was asked for and why, without library internals."""
    import requests

    where = clip(source) if not source.startswith("data:") else "the data: URI"
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"could not download {where}: the server answered HTTP {e.response.status_code}"
    if isinstance(e, requests.Timeout):
        return f"could not download {where}: no answer within 10 s"
    if isinstance(e, requests.ConnectionError):
        return f"could not download {where}: cannot connect"
    if isinstance(e, requests.RequestException):
        return f"could not download {where}: {type(e).__name__}"
    return f"could not read {where}: {type(e).__name__}: {str(e)[:120]}"
