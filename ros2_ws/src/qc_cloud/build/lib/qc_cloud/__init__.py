"""Cloud-side tools of the inspection cell: training, evaluation, export, model signing/publishing,
and watching cells over MQTT. Never installed on the edge (torch lives here only)."""
