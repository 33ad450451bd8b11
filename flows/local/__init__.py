"""``icefloe demo`` and the local stack it (and the tests) run on: a Prefect server, SeaweedFS with its
filer webhook, the event bridge and the served deployments, all on loopback."""
