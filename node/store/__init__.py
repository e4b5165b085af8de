"""Storing: the spool of received instances, the index of what was received, analysed and
sent, and the quarantine of instances that crash the analysis.
"""
