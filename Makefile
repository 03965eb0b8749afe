# Everything a user or CI runs. `make setup` is idempotent; `make test` is what CI runs after it.
SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: setup test test-jazzy lint demo bench clean help

help:
	@echo "make setup  - venv + ROS 2 (system or PyPI wheels) + dependencies + colcon build (idempotent)"
	@echo "make test   - set-up if needed, then ruff and every test (unit, node, system)"
	@echo "make test-jazzy - the node and system tests again on ROS 2 Jazzy's rclpy (own venv .venv-jazzy)"
	@echo "make demo   - run the whole cell on synthetic parts with a local broker; prints a report"
	@echo "make bench  - every benchmark under bench/, figures printed"

setup:
	@bash scripts/setup.sh

lint: setup
	@$(ENV) ruff check . && ruff format --check --diff . >/dev/null || { ruff format --check .; exit 1; }

test: lint
	@$(ENV) bash scripts/run_tests.sh $(PYTEST_ARGS)

# The tests that exercise rclpy (every node test lives in the qc_cell test folder, the system tests in tests/),
# on ROS 2 Jazzy from PyPI: the closest to Humble's rclpy API that installs here. Not the Dockerfile checks
# nor the docs commands, which do not depend on the ROS distribution.
JAZZY_TESTS := ros2_ws/src/qc_cell/test tests --ignore=tests/test_docker.py --ignore=tests/test_docs_commands.py
# A shell where scripts/env.sh was sourced already has the default set-up's paths: Jazzy's must not stack on them.
JAZZY_ENV := unset PYTHONPATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH LD_LIBRARY_PATH COLCON_PREFIX_PATH VIRTUAL_ENV \
	ROS_DISTRO FASTDDS_DEFAULT_PROFILES_FILE FASTRTPS_DEFAULT_PROFILES_FILE && export QC_ROS_DISTRO=jazzy && $(ENV)
test-jazzy:
	@bash scripts/setup.sh --distro jazzy
	@$(JAZZY_ENV) python -c 'from importlib.metadata import version as v; r = v("ros-rclpy"); \
	  print("test-jazzy: rclpy", r); assert r.startswith("7."), "not Jazzy rclpy"' \
	  && bash scripts/run_tests.sh $(JAZZY_TESTS) $(PYTEST_ARGS)

demo: setup
	@$(ENV) python -m qc_cell.bringup.demo $(DEMO_ARGS)

bench: setup
	@$(ENV) for b in bench/bench_*.py; do echo "=== $$b"; python "$$b" || exit 1; done

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/build-jazzy ros2_ws/install-jazzy ros2_ws/log
