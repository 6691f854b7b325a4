"""Ray actors: the workers that hold a resource (CPU/GPU model replicas, sandboxes, devices).

Each actor is a plain Python class; callers wrap it with ``ray.remote(cls).options(...)`` where it
is placed, so the same class is unit-tested without Ray.
"""
