"""The main() every node uses: init, spin, clean shutdown. Runs on Humble's rclpy as well as Kilted's."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

from qc_cell.ros.params import ParameterError


def make_executor(threads: int = 1, context: Context | None = None) -> Executor:
    """SingleThreadedExecutor for threads=1, else a MultiThreadedExecutor. Prefer one thread: rclpy's
    MultiThreadedExecutor scans every callback it has submitted on each wake-up, which costs CPU on busy topics."""
    if threads > 1:
        return MultiThreadedExecutor(num_threads=threads, context=context)
    return SingleThreadedExecutor(context=context)


def stop_like_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM handler (systemd, docker stop, launch's escalation): the same clean shutdown as Ctrl-C."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the shutdown itself
    raise KeyboardInterrupt


def run(node_factory: Callable[[], Node], args: list[str] | None = None, threads: int = 1) -> int:
    """Create the node and spin it until Ctrl-C or an external shutdown. Returns the process exit code.

    threads > 1 uses a MultiThreadedExecutor, so long work in its own callback group does not block
    the other callbacks.
    """
    if threading.current_thread() is threading.main_thread():
        # Installed before rclpy.init, which chains its own handler to this one. rclpy's SIGTERM path alone can
        # leave the node running: it wakes the executor first and shuts the context down afterwards, and an
        # executor that checked the context in between waits again, forever (3 of 118 SIGTERMs here). This handler
        # runs as soon as the woken main thread is back in Python, so the exit does not depend on that race.
        signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = node_factory()
        executor = make_executor(threads)
        executor.add_node(node)
        executor.spin()
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except ParameterError as exc:
        # Fail fast with one clear line; the runner/launch shows it and does not respawn in a loop silently.
        rclpy.logging.get_logger("qc_cell").fatal(f"bad parameters: {exc}")
        return 2
    except Exception:
        if rclpy.ok():
            raise
        # A callback that raced the shutdown (e.g. publishing after SIGTERM): shutting down anyway.
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
