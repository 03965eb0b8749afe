"""The fleet service: every cell's MQTT records into a database (SQLite embedded, PostgreSQL for a fleet), with
an HTTP API. ROS-free. Cores without I/O (rules, gaps, rollups, auth, settings) are unit-tested alone; the
MQTT worker (worker.py) and the HTTP app (api.py) are thin shells around store.py and queries.py.
See docs/fleet.md."""
