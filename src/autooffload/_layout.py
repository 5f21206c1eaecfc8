"""A view of a copy, translated into the same view of the original the copy was made from.

A copy on the other side holds the same logical elements as the caller's array, in its own
(dense: C or F) layout; the caller's array may be strided, reversed or transposed. A result that
is a view into the copy corresponds to a view of the caller's memory when the elements it
touches, read as multi-indices of the copy, move by a fixed multi-index step along each of its
axes: then the same steps in the caller's strides give that view. Pure arithmetic on byte
offsets and strides, so that it can be tested alone.
"""

from __future__ import annotations


def translate_view(
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    itemsize: int,
    *,
    dense_shape: tuple[int, ...],
    dense_strides: tuple[int, ...],
    target_strides: tuple[int, ...],
    element_size: int,
) -> tuple[int, tuple[int, ...]] | None:
    """(offset, strides) of the view in the target layout, or None when there is no such view.

    The view (``offset`` bytes from the dense array's first element, ``shape``, ``strides``, an
    element of ``itemsize`` bytes) lies in a dense array of ``dense_shape``/``dense_strides``
    whose elements are ``element_size`` bytes; the target is the same logical array with
    ``target_strides``, its first element at offset 0. Bytes inside one element keep their place
    (a view of the real parts of complex numbers maps). None where an element of the view would
    straddle two elements, or where the view's steps do not follow the target's axes.
    """
    if 0 in shape:
        return None
    # The dense array's axes, outermost first; an axis of length 1 takes no part in any offset.
    axes = sorted(
        ((s, n, t) for s, n, t in zip(dense_strides, dense_shape, target_strides) if n > 1), reverse=True
    )
    expected = element_size
    for stride, n, _ in reversed(axes):
        if stride != expected:
            return None  # not dense (or negative strides): offsets do not name elements uniquely
        expected *= n

    def position(byte_offset: int) -> list[int]:
        """The multi-index of the element holding ``byte_offset``, and the byte within it."""
        digits = []
        for stride, _, _ in axes:
            q, byte_offset = divmod(byte_offset, stride)
            digits.append(q)
        return digits + [byte_offset]

    limits = [n - 1 for _, n, _ in axes] + [element_size - itemsize]
    target_units = [t for _, _, t in axes] + [1]
    start = position(offset)
    low, high = list(start), list(start)
    new_strides = []
    for n, stride in zip(shape, strides):
        if n == 1:
            new_strides.append(0)  # never stepped along
            continue
        step = [b - a for a, b in zip(start, position(offset + stride))]
        for i, d in enumerate(step):
            if d > 0:
                high[i] += d * (n - 1)
            else:
                low[i] += d * (n - 1)
        new_strides.append(sum(d * u for d, u in zip(step, target_units)))
    # Each digit moves linearly along the view's axes: in range at every corner of the view means
    # in range everywhere, and then each element of the view is the element the steps name.
    if any(v < 0 for v in low) or any(v > lim for v, lim in zip(high, limits)):
        return None
    return sum(d * u for d, u in zip(start, target_units)), tuple(new_strides)
