"""Modules imported at first use (cogkit/deferred_imports.py), in fresh interpreters: the one running
the tests has imported requests long ago."""

import subprocess
import sys

from cogkit.server import STARTUP_DIR
from cogkit.weights import project_root


def run_python(code: str, startup: bool) -> list[str]:
    path = [str(project_root())] + ([str(STARTUP_DIR)] if startup else [])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_model_servers_processes_start_with_cog_but_not_its_url_libraries():
    """What cogkit/startup does at the start of coglet's processes: cog is imported, requests,
    urllib.request and what they import (urllib3, http.client, ssl) are not until cog uses them;
    then they are the real modules, and a data: URL and `requests` work through cog as before."""
    code = (
        "import sys\n"
        "print(*('cog' in sys.modules, 'requests' in sys.modules, 'urllib.request' in sys.modules,\n"
        "        'urllib3' in sys.modules, 'http.client' in sys.modules, 'ssl' in sys.modules))\n"
        "import cog.types\n"
        "with cog.types.urllib.request.urlopen('data:text/plain;base64,aGk=') as f: print(f.read().decode())\n"
        "import urllib.request, requests\n"
        "print(type(urllib.request).__name__, type(requests).__name__, cog.types.requests.get is requests.get,\n"
        "      cog.types.urllib.request is urllib.request, 'urllib3' in sys.modules)\n")
    assert run_python(code, startup=True) == ["True", "False", "False", "False", "False", "False", "hi",
                                              "module", "module", "True", "True", "True"]
    # without the startup folder nothing changes: the first line is what cog imports by itself
    assert run_python(code, startup=False)[:6] == ["False"] * 6


def test_a_stand_in_used_inside_its_block_imports_the_real_module():
    """`from NAME import X` in the block itself asks the stand-in for X: it gives way to the real module
    rather than find itself in sys.modules again."""
    code = (
        "import sys\n"
        "from cogkit.deferred_imports import deferred\n"
        "with deferred('wave', 'json'):\n"
        "    import wave\n"
        "    print(type(wave).__name__, 'wave' in sys.modules)\n"
        "    from wave import Error\n"
        "    print(Error.__module__, type(sys.modules['wave']).__name__)\n"
        "print('json' in sys.modules)\n")
    assert run_python(code, startup=False) == ["ImportedOnUse", "True", "wave", "module", "False"]
