"""The servers rabbitsocks is compared with, started by the bench driver as subprocesses."""
