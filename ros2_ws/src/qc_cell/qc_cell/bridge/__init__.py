"""The cell's link to the cloud, without ROS. cloud_link.py is the facade the cloud_bridge node wraps: it decides what
is sent and what the cloud's answers mean (settings.py in, inputs.py and outputs.py as the plain values it takes and
gives, part_images.py for samples and the re-inspection offload). Below it: the transport (bridge.py: the durable
outbox.py, the MQTT session.py and the forwarder.py that drains one into the other), record and schema handling
(records.py, schemas.py, inbound.py), signed model updates (update_manifest.py, artifact.py, model_updater.py), the
image sample budget (sampler.py) and the offload bookkeeping (offload.py)."""
