"""Test-session set-up shared by every test tier.

Each pytest run gets its own ROS domain on loopback, so concurrent runs on one machine (developers,
CI, benchmarks) never see each other's topics. Subprocesses inherit it through the environment.
"""

import os
import random
import signal

import pytest

os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 200)))
# pytest-xdist workers inherit the controller's domain: each takes its own next to it (domains go up to 232).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw") and "QC_TEST_DOMAIN_BASE" not in os.environ:
    os.environ["QC_TEST_DOMAIN_BASE"] = os.environ["ROS_DOMAIN_ID"]
    os.environ["ROS_DOMAIN_ID"] = str((int(os.environ["ROS_DOMAIN_ID"]) + 1 + int(_worker[2:])) % 233)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# A suite started in the background of a non-interactive shell inherits SIGINT ignored, and so would every node the
# tests start (a program keeps an ignored SIGINT ignored): the tests that stop nodes with Ctrl-C need it as a terminal
# has it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the group into the node id
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`), the system tests (the whole cell as processes, timed by the parts'
    deadlines) run one after another on one worker, never two at once; unit and node tests fill the other."""
    for item in items:
        if item.get_closest_marker("system") is not None:
            item.add_marker(pytest.mark.xdist_group("system"))
