from textutil.slug import slugify  # noqa: F401
