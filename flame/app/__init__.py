"""The application above the library: the ``flame`` command line (``cli``, ``commands``), the
pipeline's steps over the storage layout (``pipeline``) and the promotion gate (``promotion``).
Nothing else in ``flame/`` imports it; it may use the whole library and ``evaluations``."""
