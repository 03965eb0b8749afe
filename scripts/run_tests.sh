#!/usr/bin/env bash
# Run the whole test suite (called by `make test`). pytest exits 5 when it collected no test: that is
# reported as a failure too, because a green run that tested nothing would hide a broken collection.
set -uo pipefail
python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "run_tests: pytest collected no tests (exit 5): failing" >&2
  exit 1
fi
exit $rc
