"""`python -m cogkit.lifeline PARENT_PID MODULE ARGS...`: run MODULE as `python -m MODULE ARGS...`
would, in a process that Linux kills when PARENT_PID (the process that started it) ends, however that
one ends (kill -9 included).

cogkit starts model servers in their own process group (so that stopping one stops its worker too);
nothing then ties them to the gateway or CLI that started them. This asks the kernel for SIGKILL when
the parent dies (prctl PR_SET_PDEATHSIG) and then runs the module in this same interpreter, so the
guard costs no extra process start. coglet's worker ends by itself when its server is gone.
Elsewhere than Linux it only runs the module.
"""

import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # the signal is tied to the parent alive now: if it died before prctl, nobody would send it
    if os.getppid() != parent:
        sys.exit(f"lifeline: the parent process {parent} is already gone")


def main() -> None:
    parent, module = int(sys.argv[1]), sys.argv[2]
    die_with_parent(parent)
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
