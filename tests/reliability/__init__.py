"""The reliability matrix (issue 7): crashes, storage faults, damaged journals, the lock."""
