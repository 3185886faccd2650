"""The daemon: intake, attempts, monitors, policy and recovery."""
