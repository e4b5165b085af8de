"""Sending: which result files go where (the outbox), and their delivery to the PACS."""
