"""What every MuFleet service shares: tensors, channels, servers, health, metrics, logs, processes."""
