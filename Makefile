# Everything a user or CI runs. `make setup` is idempotent; `make test` is what CI runs after it.
SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: setup test lint demo bench clean help

help:
	@echo "make setup  - venv + ROS 2 (system or PyPI wheels) + dependencies + colcon build (idempotent)"
	@echo "make test   - ruff and every test (unit, node, system)"
	@echo "make demo   - run the whole cell on synthetic parts with a local broker; prints a report"
	@echo "make bench  - every benchmark under bench/, figures printed"

setup:
	@bash scripts/setup.sh

lint:
	@$(ENV) ruff check . && ruff format --check --diff . >/dev/null || { ruff format --check .; exit 1; }

test: lint
	@$(ENV) bash scripts/run_tests.sh $(PYTEST_ARGS)

demo: setup
	@$(ENV) python -m qc_cell.bringup.demo $(DEMO_ARGS)

bench: setup
	@$(ENV) for b in bench/bench_*.py; do echo "=== $$b"; python "$$b" || exit 1; done

clean:
	rm -rf ros2_ws/build ros2_ws/install ros2_ws/log
