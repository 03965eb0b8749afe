"""The cell's link to the cloud, without ROS: MQTT session and reconnects (session.py), the durable outbox
(outbox.py) and the forwarder that drains it (forwarder.py), record and schema handling (records.py,
schemas.py, inbound.py), signed model updates (update_manifest.py, artifact.py, model_updater.py), the
image sample budget (sampler.py) and the re-inspection offload (offload.py). bridge.py ties them together
for the cloud_bridge node."""
