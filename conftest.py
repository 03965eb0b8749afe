"""Test-session set-up shared by every test tier.

Each pytest run gets its own ROS domain on loopback, so concurrent runs on one machine (developers,
CI, benchmarks) never see each other's topics. Subprocesses inherit it through the environment.
"""

import os
import random

os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 200)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
