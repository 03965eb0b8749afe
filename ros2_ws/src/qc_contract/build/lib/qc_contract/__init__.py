"""The contract between the inspection cell (qc_cell) and the cloud side (qc_cloud), without ROS.

What both sides must agree on, in one place:
- vocabulary.py: verdicts, alert severities, reject outcomes, model states (the qc_interfaces constants' values).
- records.py, schemas/: the JSON records on MQTT (envelope, builders) and their JSON Schemas; inbound.py parses
  and validates what arrives.
- topics.py: the MQTT topic layout of a cell (CellId); broker.py, mqtt_client.py: broker settings and the paho
  client both sides connect with.
- model_manifest.py, preprocess.py: the model package manifest and the preprocessing the model was trained with.
- update_manifest.py, artifact.py: signed model update manifests and the artifacts they describe.
- synthetic.py: the procedural reference parts both sides test (and the default model trains) on.
"""
