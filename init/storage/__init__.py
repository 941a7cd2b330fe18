"""Storage assembly: one device registry, one event loop, a handler per kind of container.

``loop`` holds the registry and the loop, ``reader`` the reads with a
deadline, and one module per handler (``crypt``, ``lvm``, ``md``,
``verity``) runs the real tool for its kind through ``ctx.sys.spawn``. The
``storage`` stage builds the handlers the image carries; ``root`` consumes
the registry whether or not there are any.
"""
