"""A reader's correction of an earlier result, as the worker needs it (issue #23): the
correction's analysis options and the reader's edited SEG. The revision a corrected result
records is a contract of its own (:mod:`workers.revision`): the job, the pipeline and the
encoders share it.
"""
