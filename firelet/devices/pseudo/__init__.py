"""Devices no hardware has: ones the guest uses to talk to the VMM (Firecracker's "pseudo" devices)."""
