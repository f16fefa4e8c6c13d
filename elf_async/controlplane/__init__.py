"""The control plane: AWS IoT's API, paced and retried (aws); the crash-safe ledger; one way
into a fleet (session.open_fleet) and one fan-out over its things (fanout) for create and
clean; recovery of interrupted certificate creations; status. The engines take a
`ControlPlane`, so tests run them on an in-memory one (tests/support/fake_plane.py)."""
