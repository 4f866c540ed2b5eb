import numpy as np

from kwspot.ring import RingBuffer


def test_window_is_zero_padded_before_full():
    ring = RingBuffer(8)
    ring.write(np.array([1, 2, 3], np.float32))
    assert ring.window().tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert ring.total == 3


def test_wraps_and_keeps_newest_in_order():
    ring = RingBuffer(5)
    data = np.arange(1, 13, dtype=np.float32)
    for chunk in np.array_split(data, 5):
        ring.write(chunk)
    assert ring.window().tolist() == [8, 9, 10, 11, 12]
    assert ring.total == 12


def test_block_larger_than_ring_keeps_its_tail():
    ring = RingBuffer(4)
    ring.write(np.array([9, 9], np.float32))
    ring.write(np.arange(10, dtype=np.float32))
    assert ring.window().tolist() == [6, 7, 8, 9]
    ring.write(np.array([42], np.float32))
    assert ring.window().tolist() == [7, 8, 9, 42]


def test_window_is_a_copy():
    ring = RingBuffer(3)
    ring.write(np.ones(3, np.float32))
    w = ring.window()
    w[:] = 5
    assert ring.window().tolist() == [1, 1, 1]
