"""Background jobs: the arq worker's settings and the job functions, thin wrappers over services.

Nothing in ``feed`` imports this package except the entry points (``feed.app`` for the embedded mode's in-process
runner, ``feed.cli`` for ``cipherfeed worker`` and ``cipherfeed jobs``).
"""
