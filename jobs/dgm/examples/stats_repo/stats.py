"""Small descriptive statistics over lists of numbers."""


def mean(xs: list[float]) -> float:
    """Arithmetic mean; raises ValueError on an empty list."""
    if not xs:
        raise ValueError("mean of an empty list")
    return sum(xs) / len(xs)


def median(xs: list[float]) -> float:
    """Middle value of the sorted list; the mean of the two middle values when the length is
    even. Raises ValueError on an empty list."""
    if not xs:
        raise ValueError("median of an empty list")
    s = sorted(xs)
    return s[len(s) // 2]
