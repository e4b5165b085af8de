"""Scheduling: when a study is complete, which analyses go to the broker and in what order,
what their outcomes mean, corrections and patient values from outside the image.
"""
