"""The cell's link to the cloud, without ROS. cloud_link.py is the facade the cloud_bridge node wraps: it decides what
is sent and what the cloud's answers mean (settings.py in, inputs.py and outputs.py as the plain values it takes and
gives, part_images.py for samples and the re-inspection offload). Below it: the transport (bridge.py: the durable
outbox.py, the MQTT session.py and the forwarder.py that drains one into the other), model updates applied on the
cell (model_updater.py), the image sample budget (sampler.py) and the offload bookkeeping (offload.py). What the
cloud must agree on (records, schemas, topics, broker settings, update signing) is in qc_contract."""
