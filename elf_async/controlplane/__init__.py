"""The control plane: AWS IoT's API, paced and retried; the crash-safe ledger; create, clean,
recovery, status."""
