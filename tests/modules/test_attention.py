"""The shared attention pieces: buckets, chunk mask and the preallocated key/value cache."""

import torch

from wavslm.modules.attention import KVCache, chunk_mask, relative_position_bucket


def test_buckets_exact_near_log_far_and_split_by_sign():
    rel = torch.arange(-1000, 1001)
    b = relative_position_bucket(rel, num_buckets=320, max_distance=800)
    assert torch.equal(b[1000 - torch.arange(0, 80)], torch.arange(0, 80))  # exact below num_buckets // 4
    assert torch.equal(b[1000 + torch.arange(1, 80)], torch.arange(161, 240))  # positive distances: upper half
    assert b[1000 - 800 :].max() <= 319 and b[: 1000 - 800].unique().tolist() == [159]  # saturates
    far = b[1000 - 799 : 1000 - 79].flip(0)
    assert (far.diff() >= 0).all()  # monotone in distance


def test_chunk_mask_is_aligned_to_absolute_multiples():
    q = torch.arange(5, 9)
    k = torch.arange(0, 12)
    mask = chunk_mask(q, k, chunk=4, window=6)
    # Query 5 and 6, 7 are in chunk [4, 8): keys [2, 8). Query 8 is in chunk [8, 12): keys [6, 12).
    assert mask[0].nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7]
    assert mask[3].nonzero().flatten().tolist() == [6, 7, 8, 9, 10, 11]


def test_cache_writes_in_place_and_compacts_only_when_full():
    like = torch.zeros(1)
    cache = KVCache.empty(1, 1, 1, capacity=8, like=like)
    buffer = cache.k
    seen = []
    for step in range(10):
        new = torch.full((1, 1, 2, 1), float(step))
        keep_from = max(0, 2 * step - 3)
        k, _ = cache.append(new, new, keep_from)
        seen.append(k.flatten().tolist())
        assert cache.k is buffer  # never reallocated
        assert cache.first_kept(keep_from) >= keep_from - 1
    assert seen[-1][-2:] == [9.0, 9.0]
    assert cache.length <= 8
    # A call with more new frames than the capacity grows the buffer once.
    k, _ = cache.append(torch.zeros(1, 1, 20, 1), torch.zeros(1, 1, 20, 1), keep_from=100)
    assert cache.capacity >= 20 and k.shape[2] == 20


def test_few_frame_positional_convolution_equals_the_convolution():
    from wavslm.modules.transformer import ConvPositionalEmbedding, _grouped_conv_as_matmul

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(32, 32, 8, groups=4)
    for batch, frames in [(1, 1), (1, 4), (2, 5), (3, 8)]:
        x = torch.randn(batch, 32, frames + 7)
        torch.testing.assert_close(_grouped_conv_as_matmul(x, conv), conv(x), atol=1e-5, rtol=1e-5)
    # A causal stream fed 4 frames at a time (the matmul) equals one pass over the whole (the convolution).
    pos = ConvPositionalEmbedding(32, 8, 4, causal=True)
    x = torch.randn(2, 40, 32)
    whole, _ = pos(x)
    state, pieces = None, []
    for i in range(0, 40, 4):
        y, state = pos(x[:, i : i + 4], state)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-5, rtol=1e-5)
