"""Run a command that dies with the process that started it:
`python -m qc_cell.bringup.die_with_parent PARENT_PID CMD [ARG...]`.

Sets the Linux parent-death signal (SIGINT: an rclpy node shuts down cleanly on it) and execs CMD in place, so the
command keeps this process's pid. The supervisor starts every node through it: when the runner is killed
(SIGKILL, a crash, an OOM kill) its nodes do not run on as orphans driving a camera or an ejector.

SIGINT gets its default action back first: a runner started in the background of a shell (`... &`) inherits SIGINT
ignored, and its nodes would otherwise ignore the runner's SIGINT (and the parent-death signal) too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m qc_cell.bringup.die_with_parent PARENT_PID CMD [ARG...]", file=sys.stderr)
        return 2
    parent, argv = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0:
            print(f"die_with_parent: prctl failed (errno {ctypes.get_errno()})", file=sys.stderr)
        if os.getppid() != parent:  # the parent died before the signal was armed
            return 1
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # an ignored signal stays ignored across exec; a default one not
    os.execvp(argv[0], argv)  # the parent-death signal survives exec
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
