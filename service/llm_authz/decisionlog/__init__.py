"""Shipping decision records to a remote collector as OPA decision-log events (`--decision-log-url`).

cursor.py keeps how far delivery got (`cursors/<name>.json` in the audit directory);
tail.py reads each chain of the audit log from there, plain or compressed, as it grows;
shipper.py batches, posts and retries.
"""
