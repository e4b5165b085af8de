"""Operating: the ``bodycomp`` command, the service that runs everything together, the
operator's status, Prometheus metrics and the process helpers.
"""
