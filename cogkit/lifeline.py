"""`python -m cogkit.lifeline PARENT_PID COMMAND...`: become COMMAND, which Linux kills when the
process that started it ends, however that one ends (kill -9 included).

cogkit starts model servers in their own process group (so that stopping one stops its worker too);
nothing then ties them to the gateway or CLI that started them. This asks the kernel to send SIGKILL
when the parent dies (prctl PR_SET_PDEATHSIG, which survives exec) and then execs the command.
coglet's worker ends by itself when its server is gone. Elsewhere than Linux it only execs.
"""

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # the signal is tied to the parent alive now: if it died before prctl, nobody would send it
        if os.getppid() != parent:
            sys.exit(f"lifeline: the parent process {parent} is already gone")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
