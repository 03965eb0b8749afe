"""The cloud verifier (`qc_cloud verifier`): answers the cells' verify/request with a bigger model.

core.py: admission, dynamic batching, the deadline rule and scoring (no MQTT); model.py: the model package
loaded with the edge's own manifest and backend code; service.py: the MQTT shell (shared subscription)."""
