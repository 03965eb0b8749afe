"""The cell's link to the cloud, without ROS: MQTT session and reconnects (session.py), the durable outbox
(outbox.py) and the forwarder that drains it (forwarder.py), model updates applied on the cell
(model_updater.py), the image sample budget (sampler.py) and the re-inspection offload (offload.py). bridge.py
ties them together for the cloud_bridge node. What the cloud must agree on (records, schemas, topics, broker
settings, update signing) is in qc_contract."""
