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

try:
    from rclpy.signals import SignalHandlerOptions

    WITHOUT_RCLPY_SIGNAL_HANDLERS: dict = {"signal_handler_options": SignalHandlerOptions.NO}
except ImportError:  # an rclpy without the option: its handlers then chain to the Python ones installed first
    WITHOUT_RCLPY_SIGNAL_HANDLERS = {}

# How soon the main thread acts on Ctrl-C or SIGTERM when the executor has nothing to do (an executor wait is
# not interrupted by a signal; Python runs its handlers between two waits).
SIGNAL_CHECK_S = 0.2


def make_executor(threads: int = 1, context: Context | None = None) -> Executor:
    """SingleThreadedExecutor for threads=1, else a MultiThreadedExecutor. Prefer one thread: rclpy's
    MultiThreadedExecutor scans every callback it has submitted on each wake-up, which costs CPU on busy topics."""
    if threads > 1:
        return MultiThreadedExecutor(num_threads=threads, context=context)
    return SingleThreadedExecutor(context=context)


# Set by a stop signal. Its KeyboardInterrupt can be raised inside Python code that rclpy's C++ calls back into
# (building a taken message), which rclpy turns into a RuntimeError ("Unable to convert call argument") or swallows:
# the flag, not the exception, says that the process is stopping.
STOP_REQUESTED = threading.Event()


def stop_like_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM handler (systemd, docker stop, launch's escalation): the same clean shutdown as Ctrl-C."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the shutdown itself
    STOP_REQUESTED.set()
    raise KeyboardInterrupt


def _ctrl_c(signum: int, frame: object) -> None:
    STOP_REQUESTED.set()
    raise KeyboardInterrupt


def run(node_factory: Callable[[], Node], args: list[str] | None = None, threads: int = 1) -> int:
    """Create the node and spin it until Ctrl-C, SIGTERM or an external shutdown. Returns the process exit code.

    threads > 1 uses a MultiThreadedExecutor, so long work in its own callback group does not block
    the other callbacks.
    """
    options = {}
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM are handled by Python on this thread, not by rclpy: rclpy's handlers wake the executor
        # and shut the context down from a thread of their own, which raced this thread (the executor woke first
        # and waited again, forever: 3 of 118 SIGTERMs; with a Python handler chained to rclpy's, the clean-up here
        # still raced that thread and hung under load).
        signal.signal(signal.SIGTERM, stop_like_ctrl_c)
        signal.signal(signal.SIGINT, _ctrl_c)
        options = WITHOUT_RCLPY_SIGNAL_HANDLERS
    rclpy.init(args=args if args is not None else sys.argv, **options)
    node = None
    try:
        node = node_factory()
        executor = make_executor(threads)
        executor.add_node(node)
        while rclpy.ok() and not STOP_REQUESTED.is_set():
            executor.spin_once(timeout_sec=SIGNAL_CHECK_S)
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    except ParameterError as exc:
        # Fail fast with one clear line; the runner/launch shows it and does not respawn in a loop silently.
        rclpy.logging.get_logger("qc_cell").fatal(f"bad parameters: {exc}")
        return 2
    except Exception:
        if rclpy.ok() and not STOP_REQUESTED.is_set():
            raise
        # A callback that raced the shutdown (e.g. publishing after SIGTERM, or a stop signal raised while rclpy
        # built a message): shutting down anyway.
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
