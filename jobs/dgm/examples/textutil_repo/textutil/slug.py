"""URL slugs from titles."""
import re


def slugify(title: str) -> str:
    """Lower-case words joined by single dashes; anything but letters and digits separates words,
    and the slug never starts or ends with a dash."""
    return re.sub(r"[^a-z0-9]", "-", title.lower())
