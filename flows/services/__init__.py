"""Long-running programs beside the flows (not flows themselves): the event bridge that turns object-store
notifications into Prefect events."""
