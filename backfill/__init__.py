"""The JQL sync engine (full, incremental, reconciliation), its jobs and the schedule."""
