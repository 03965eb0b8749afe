#!/usr/bin/env bash
# Run the whole test suite (called by `make test`). pytest exits 5 when it collected no test: that is
# reported as a failure too, because a green run that tested nothing would hide a broken collection.
# The suite runs on QC_TEST_WORKERS pytest-xdist workers (2: most tests wait on processes, brokers and
# databases, so two share 2 cores well); each worker has its own ROS domain, and the system tests share one
# worker, one at a time (conftest.py). 0 runs in one process.
set -uo pipefail
workers="${QC_TEST_WORKERS:-2}"
args=()
[[ "$workers" != 0 ]] && args=(-n "$workers" --dist loadgroup)
args+=(--durations=30)  # the slowest tests in every log: where the suite's time goes
python -m pytest "${args[@]}" "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "run_tests: pytest collected no tests (exit 5): failing" >&2
  exit 1
fi
exit $rc
