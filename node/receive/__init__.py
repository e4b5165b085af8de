"""Receiving: the DICOM SCP, its extra processes and acceptor threads, the checks on what
arrives and the journal that makes an instance durable before Success.
"""
