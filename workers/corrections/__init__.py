"""A reader's correction of an earlier result, as the worker needs it (issue #23): the
correction's analysis options, the revision it records, the reader's edited SEG.
"""
