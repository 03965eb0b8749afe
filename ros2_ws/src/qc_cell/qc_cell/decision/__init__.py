"""The verdict on each part (ROS-free): the visual rule with process escalation, the part ledger that gives
every part exactly one verdict (fail-safe NOT_INSPECTED at its deadline), the process state in force at
capture time, and the rolling KPIs."""
