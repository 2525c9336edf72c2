"""sam.data.official_autoaugment: each operation against values worked out by hand from the
official definitions (google-research/sam autoaugment/autoaugment.py, TF float32 arithmetic),
the policy tables against policies.py, and the batched policy's contract."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from sam.data.official_autoaugment import (
    FILL,
    OPS,
    POLICIES,
    POLICY_CIFAR,
    autocontrast,
    brightness,
    color,
    contrast,
    cutout,
    equalize,
    invert,
    level_to_arg,
    official_autoaugment,
    posterize,
    rotate,
    sharpness,
    shear_x,
    shear_y,
    solarize,
    solarize_add,
    translate_x,
    translate_y,
)

MIRROR = Path("/work/.mirror/google-research+sam/repo")
G = FILL  # the official fill grey, 128


def img(*channels) -> torch.Tensor:
    """A 1x3xHxW uint8 image from three HxW nested lists (or ints, broadcast to 2x2)."""
    chans = [torch.full((2, 2), c) if isinstance(c, int) else torch.tensor(c) for c in channels]
    return torch.stack(chans).to(torch.uint8).unsqueeze(0)


def grid(h: int = 4, w: int = 4) -> torch.Tensor:
    """1x3xHxW image whose pixel (c, y, x) is 100 c + 10 y + x: every value tells its origin."""
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(h), torch.arange(w), indexing="ij")
    return (100 * c + 10 * y + x).to(torch.uint8).unsqueeze(0)


def pixels(src: torch.Tensor, rows: list[list[tuple[int, int] | None]]) -> torch.Tensor:
    """The image whose (y, x) is src's pixel at rows[y][x] = (y', x'), or FILL for None."""
    out = torch.full((1, 3, len(rows), len(rows[0])), G, dtype=torch.uint8)
    for y, row in enumerate(rows):
        for x, at in enumerate(row):
            if at is not None:
                out[0, :, y, x] = src[0, :, at[0], at[1]]
    return out


# ---------------------------------------------------------------------------------------
# Pixel-wise colour operations
# ---------------------------------------------------------------------------------------


def test_solarize_inverts_pixels_at_or_above_the_threshold():
    x = img([[0, 50], [127, 128]], [[200, 255], [1, 254]], 128)
    assert torch.equal(solarize(x, 128), img([[0, 50], [127, 127]], [[55, 0], [1, 1]], 127))
    assert level_to_arg("Solarize", 0) == 0  # level 0: every pixel >= 0, all inverted
    assert torch.equal(solarize(x, 0), 255 - x)


def test_solarize_add_adds_below_the_threshold_and_clips():
    x = img([[0, 100], [127, 128]], [[250, 127], [5, 255]], 0)
    assert torch.equal(solarize_add(x, 33),
                       img([[33, 133], [160, 128]], [[250, 160], [38, 255]], 33))
    assert torch.equal(solarize_add(x, 200), img([[200, 255], [255, 128]],
                                                 [[250, 255], [205, 255]], 200))


def test_posterize_keeps_the_top_bits_and_tf_clamps_zero_bits_to_one():
    x = img([[200, 63], [64, 255]], [[127, 128], [171, 0]], 100)
    # 2 bits (level 7): & 0b11000000
    assert torch.equal(posterize(x, 2), img([[192, 0], [64, 192]], [[64, 128], [128, 0]], 64))
    # 1 bit (level 3): & 0b10000000; 0 bits: TF clamps the shift of 8 to 7, so also 1 bit
    one_bit = img([[128, 0], [0, 128]], [[0, 128], [128, 0]], 0)
    assert torch.equal(posterize(x, 1), one_bit)
    assert torch.equal(posterize(x, 0), one_bit)
    assert torch.equal(posterize(x, 4)[0, 1, 1, 0], torch.tensor(160, dtype=torch.uint8))


def test_invert():
    x = img([[0, 1], [128, 255]], 7, 200)
    assert torch.equal(invert(x), img([[255, 254], [127, 0]], 248, 55))


def test_brightness_scales_and_truncates():
    x = img([[0, 100], [101, 200]], 255, 3)
    assert torch.equal(brightness(x, 1.5), img([[0, 150], [151, 255]], 255, 4))  # 151.5, 4.5
    assert torch.equal(brightness(x, 0.5), img([[0, 50], [50, 100]], 127, 1))


def test_color_blends_from_tfs_grayscale():
    # TF grey = trunc(255.5 * (0.2989 r + 0.5870 g + 0.1140 b) / 255):
    # (200, 0, 0) -> 59.90 -> 59 (PIL would round to 60); white -> 255.47 -> 255;
    # (10, 20, 30) -> 18.18 -> 18
    x = torch.tensor([[200, 255, 10], [0, 255, 20], [0, 255, 30]], dtype=torch.uint8)
    x = x.view(1, 3, 1, 3)
    grey = torch.tensor([59, 255, 18], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    assert torch.equal(color(x, 0.0), grey)
    # 0.5: 59 + 0.5 * 141 = 129.5; 59 - 29.5; 18 - 4, 18 + 1, 18 + 6
    half = torch.tensor([[129, 255, 14], [29, 255, 19], [29, 255, 24]], dtype=torch.uint8)
    assert torch.equal(color(x, 0.5), half.view(1, 3, 1, 3))
    # 1.5 extrapolates and clips: 59 + 211.5 -> 255, 59 - 88.5 -> 0; 18 - 12, 18 + 3, 18 + 18
    ext = torch.tensor([[255, 255, 6], [0, 255, 21], [0, 255, 36]], dtype=torch.uint8)
    assert torch.equal(color(x, 1.5), ext.view(1, 3, 1, 3))
    assert torch.equal(color(x, 1.0), x)


def test_contrast_blends_toward_pixel_count_over_256_not_the_mean_grey():
    # Official: mean = sum(histogram) / 256 = H*W/256, so 1 for 16x16 (not ~100 here)
    x = torch.empty(1, 3, 16, 16, dtype=torch.uint8)
    x[0, 0], x[0, 1] = 101, 51
    x[0, 2, :8], x[0, 2, 8:] = 0, 255
    half, ext = contrast(x, 0.5), contrast(x, 1.5)
    assert half[0, 0].eq(51).all() and half[0, 1].eq(26).all()  # 1 + 50, 1 + 25
    assert half[0, 2, :8].eq(0).all() and half[0, 2, 8:].eq(128).all()  # 0.5 -> 0, 1 + 127
    assert ext[0, 0].eq(151).all() and ext[0, 1].eq(76).all()
    assert ext[0, 2, :8].eq(0).all() and ext[0, 2, 8:].eq(255).all()  # -0.5 -> 0, 382 -> 255
    # CIFAR size: the constant is 1024 / 256 = 4; 4 + 0.5 * (100 - 4) = 52
    assert contrast(torch.full((1, 3, 32, 32), 100, dtype=torch.uint8), 0.5).eq(52).all()
    # 4x4: 16 / 256 truncates to 0, so Contrast is Brightness
    small = grid()
    assert torch.equal(contrast(small, 0.7), brightness(small, 0.7))


def test_sharpness_smooths_the_interior_and_keeps_the_border():
    # SMOOTH = [[1,1,1],[1,5,1],[1,1,1]] / 13 over the 2x2 interior of a 4x4 image
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    x[0, 0, 1, 1] = 130  # centre of (1,1): 5*130/13 = 50; neighbour of the rest: 130/13 = 10
    x[0, 1, 2, 2] = 26  # centre of (2,2): 10; neighbour of the other three: 2
    x[0, 2, 0, 0] = 13  # border pixel: kept, and adds 13/13 = 1 to (1,1) only
    smooth = torch.zeros_like(x)
    smooth[0, 0, 1:3, 1:3] = torch.tensor([[50, 10], [10, 10]])
    smooth[0, 1, 1:3, 1:3] = torch.tensor([[2, 2], [2, 10]])
    smooth[0, 2, 1, 1], smooth[0, 2, 0, 0] = 1, 13
    assert torch.equal(sharpness(x, 0.0), smooth)
    half = torch.zeros_like(x)  # smooth + 0.5 (x - smooth), truncated
    half[0, 0, 1:3, 1:3] = torch.tensor([[90, 5], [5, 5]])
    half[0, 1, 1:3, 1:3] = torch.tensor([[1, 1], [1, 18]])
    half[0, 2, 0, 0] = 13  # (1,1): 1 - 0.5 -> 0
    assert torch.equal(sharpness(x, 0.5), half)
    ext = torch.zeros_like(x)  # smooth + 1.5 (x - smooth), clipped at 0
    ext[0, 0, 1, 1], ext[0, 1, 2, 2], ext[0, 2, 0, 0] = 170, 34, 13
    assert torch.equal(sharpness(x, 1.5), ext)
    tiny = grid(2, 4)  # no 3x3 window: every pixel is border
    assert torch.equal(sharpness(tiny, 0.3), tiny)


def test_autocontrast_stretches_each_channel_to_full_range():
    x = img([[0, 10], [85, 10]], [[64, 128], [192, 64]], 77)
    # scale 255/85 = 3; scale 255/128, offset -127.5 (128 -> 127.5 -> 127); constant: as is
    assert torch.equal(autocontrast(x), img([[0, 30], [255, 30]], [[0, 127], [255, 0]], 77))
    y = img([[50, 100], [150, 75]], 0, 255)  # scale 2.55, offset -127.5: 127.5, 63.75
    assert torch.equal(autocontrast(y), img([[0, 127], [255, 63]], 0, 255))


def test_equalize_follows_pils_histogram_lut():
    x = torch.empty(1, 3, 32, 32, dtype=torch.uint8)
    ch0 = x[0, 0].view(-1)
    ch0[:512], ch0[512:768], ch0[768:] = 0, 100, 200
    x[0, 1] = 7
    x[0, 2] = torch.arange(256).repeat_interleave(4).view(32, 32)
    out = equalize(x)
    # ch0: step = (1024 - 256) // 255 = 3; lut[v] = (#pixels below v + 1) // 3:
    # 0 -> 0, 100 -> 513 // 3 = 171, 200 -> 769 // 3 = 256 -> 255
    exp0 = torch.empty(1024, dtype=torch.uint8)
    exp0[:512], exp0[512:768], exp0[768:] = 0, 171, 255
    assert torch.equal(out[0, 0].view(-1), exp0)
    assert out[0, 1].eq(7).all()  # step = (1024 - 1024) // 255 = 0: unchanged
    # ch2: 4 of each value, step = 1020 // 255 = 4, lut[v] = (4 v + 2) // 4 = v
    assert torch.equal(out[0, 2], x[0, 2])
    assert torch.equal(equalize(grid()), grid())  # 16 pixels: step 0 everywhere


# ---------------------------------------------------------------------------------------
# Geometric operations and Cutout (fill 128)
# ---------------------------------------------------------------------------------------


def test_rotate_quarter_turns_by_hand_indexing():
    x = grid()
    # +90: output (r, c) samples input (row c, column 3 - r); -90: (3 - c, r); 180
    assert torch.equal(rotate(x, 90.0), pixels(x, [[(c, 3 - r) for c in range(4)]
                                                   for r in range(4)]))
    assert torch.equal(rotate(x, -90.0), pixels(x, [[(3 - c, r) for c in range(4)]
                                                    for r in range(4)]))
    assert torch.equal(rotate(x, 180.0), pixels(x, [[(3 - r, 3 - c) for c in range(4)]
                                                    for r in range(4)]))
    assert torch.equal(rotate(x, 0.0), x)


def test_rotate_non_square_fills_outside():
    # 2x4, 90 degrees about the centre (1.5, 0.5): input (row c - 1, column 2 - r)
    x = grid(2, 4)
    exp = pixels(x, [[None, (0, 2), (1, 2), None], [None, (0, 1), (1, 1), None]])
    assert torch.equal(rotate(x, 90.0), exp)


def test_shear_x_rounds_halves_away_from_zero_and_fills():
    x = grid()
    # level 0.5: input column x + 0.5 y -> shifts 0, 0.5 -> 1, 1, 1.5 -> 2
    exp = pixels(x, [[(0, 0), (0, 1), (0, 2), (0, 3)],
                     [(1, 1), (1, 2), (1, 3), None],
                     [(2, 1), (2, 2), (2, 3), None],
                     [(3, 2), (3, 3), None, None]])
    assert torch.equal(shear_x(x, 0.5), exp)
    # level -0.5: x - 0.5 y; -0.5 -> -1 (outside), 0.5 -> 1, -1.5 -> -2: not the mirror
    exp = pixels(x, [[(0, 0), (0, 1), (0, 2), (0, 3)],
                     [None, (1, 1), (1, 2), (1, 3)],
                     [None, (2, 0), (2, 1), (2, 2)],
                     [None, None, (3, 1), (3, 2)]])
    assert torch.equal(shear_x(x, -0.5), exp)


def test_shear_y_is_shear_x_transposed():
    x = grid()
    for level in (0.5, -0.5, 0.24):
        t = shear_x(x.transpose(-1, -2).contiguous(), level).transpose(-1, -2)
        assert torch.equal(shear_y(x, level), t)


def test_translate_moves_content_and_fills():
    x = grid()
    row = [[(r, c + 1) if c < 3 else None for c in range(4)] for r in range(4)]
    assert torch.equal(translate_x(x, 1.0), pixels(x, row))  # samples column x + 1
    row = [[(r, c - 2) if c >= 2 else None for c in range(4)] for r in range(4)]
    assert torch.equal(translate_x(x, -2.0), pixels(x, row))
    col = [[(r + 1, c) if r < 3 else None for c in range(4)] for r in range(4)]
    assert torch.equal(translate_y(x, 1.0), pixels(x, col))
    # CIFAR policy: level 9 with translate_const 250 is 225 px: nothing left of a 32x32 image
    assert level_to_arg("TranslateY", 9) == 225.0
    big = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert translate_x(big, -225.0).eq(G).all() and translate_y(big, 225.0).eq(G).all()


def test_cutout_fills_a_clipped_square():
    x = grid()
    # centre (row 1, column 2), pad 1: rows [0, 2) x columns [1, 3)
    exp = x.clone()
    exp[..., 0:2, 1:3] = G
    assert torch.equal(cutout(x, 1, 1, 2), exp)
    exp = x.clone()
    exp[..., 0:2, 0:2] = G  # centre (0, 0), pad 2: rows/columns [-2, 2) clipped to [0, 2)
    assert torch.equal(cutout(x, 2, 0, 0), exp)
    assert torch.equal(cutout(x, 0, 2, 2), x)  # level 0: empty square
    big = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    assert level_to_arg("Cutout", 4) == 40 and cutout(big, 40, 31, 0).eq(G).all()
    exp = big.clone()
    exp[..., 0:31, :] = G  # level 3 = pad 30 at (1, 5): rows [-29, 31), columns [-25, 35)
    assert torch.equal(cutout(big, 30, 1, 5), exp)


def test_ops_take_one_argument_per_image():
    x = torch.full((3, 3, 2, 2), 100, dtype=torch.uint8)
    out = brightness(x, torch.tensor([0.1, 1.0, 1.9]))
    assert out[:, 0, 0, 0].tolist() == [10, 100, 190]
    out = translate_x(grid().expand(2, 3, 4, 4), torch.tensor([1.0, -1.0]))
    assert out[0, 0, 0].tolist() == [1, 2, 3, G] and out[1, 0, 0].tolist() == [G, 0, 1, 2]


# ---------------------------------------------------------------------------------------
# Levels and policy tables
# ---------------------------------------------------------------------------------------


def test_level_to_arg_matches_the_official_mapping():
    assert level_to_arg("Rotate", 2) == 6.0 and level_to_arg("Rotate", 7) == 21.0  # 30 l / 10
    assert level_to_arg("ShearY", 8) == pytest.approx(0.24)  # 0.3 l / 10
    assert level_to_arg("TranslateX", 8) == 200.0  # 250 l / 10
    assert level_to_arg("TranslateX", 8, translate_const=100) == 80.0
    assert level_to_arg("Posterize", 7) == 2 and level_to_arg("Posterize", 3) == 1  # int(4l/10)
    assert level_to_arg("Solarize", 5) == 128 and level_to_arg("Solarize", 3) == 76
    assert level_to_arg("SolarizeAdd", 3) == 33  # int(110 l / 10)
    assert level_to_arg("Cutout", 3) == 30  # int(100 l / 10)
    assert level_to_arg("Sharpness", 1) == pytest.approx(0.28)  # 1.8 l / 10 + 0.1
    assert level_to_arg("Color", 5) == 1.0 and level_to_arg("Equalize", 9) == 0.0
    with pytest.raises(ValueError, match="unknown AutoAugment operation"):
        level_to_arg("Blur", 3)


def test_policy_tables_match_policies_py():
    assert len(POLICY_CIFAR) == 95 and all(len(sub) == 2 for sub in POLICY_CIFAR)
    assert len(POLICIES["imagenet"]) == 25 and len(POLICIES["svhn"]) == 25
    assert POLICY_CIFAR[0] == [("Invert", 0.1, 7), ("Contrast", 0.2, 6)]  # exp0_0[0]
    assert POLICY_CIFAR[20] == [("ShearY", 0.2, 7), ("Posterize", 0.3, 7)]  # exp1_0[0]
    assert POLICY_CIFAR[56] == [("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)]  # exp2_0[1]
    assert POLICY_CIFAR[61] == [("Cutout", 0.2, 4), ("Equalize", 0.1, 1)]  # exp2_1[1]
    assert POLICY_CIFAR[-1] == [("Equalize", 0.6, 9), ("Equalize", 0.4, 4)]  # exp2_7[4]
    assert POLICIES["svhn"][0] == [("ShearX", 0.9, 4), ("Invert", 0.2, 3)]
    assert POLICIES["imagenet"][6] == [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)]
    used = {name for table in POLICIES.values() for sub in table for name, _, _ in sub}
    assert used == set(OPS)
    assert {name for sub in POLICY_CIFAR for name, _, _ in sub} == set(OPS) - {"SolarizeAdd"}


def test_policy_tables_equal_the_mirrored_official_file():
    try:
        src = subprocess.run(["git", "-C", str(MIRROR), "show", "HEAD:autoaugment/policies.py"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("no mirror of google-research/sam here")
    ns: dict = {}
    exec(compile(src, "policies.py", "exec"), ns)  # defines only the three policy functions
    for name in ("cifar", "imagenet", "svhn"):
        official = [[tuple(op) for op in sub] for sub in ns[f"policy_{name}"]()]
        assert POLICIES[name] == official


# ---------------------------------------------------------------------------------------
# The batched policy
# ---------------------------------------------------------------------------------------


def cifar_batch(n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def test_deterministic_for_a_seeded_generator_and_keeps_dtype_shape():
    x = cifar_batch()
    before = x.clone()
    a = official_autoaugment(x, torch.Generator().manual_seed(3))
    b = official_autoaugment(x, torch.Generator().manual_seed(3))
    c = official_autoaugment(x, torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)  # input untouched
    changed = (a != x).flatten(1).any(1).float().mean().item()
    assert 0.4 < changed < 1.0  # most, not all, images altered
    g = torch.Generator().manual_seed(3)
    assert not torch.equal(official_autoaugment(x, g), official_autoaugment(x, g))


def test_fast_on_a_cifar_batch():
    x, g = cifar_batch(), torch.Generator().manual_seed(0)
    official_autoaugment(x, g)  # warm-up
    times = []
    for _ in range(3):  # best of three: robust to a busy machine (~0.05 s on one thread)
        start = time.perf_counter()
        official_autoaugment(x, g)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.5


def test_probabilities_and_slot_order():
    x = torch.full((2000, 3, 2, 2), 100, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = official_autoaugment(x, g, policy=[[("Invert", 1.0, 0), ("Invert", 0.0, 0)]])
    assert out.eq(155).all()
    out = official_autoaugment(x, g, policy=[[("Invert", 1.0, 0), ("Invert", 1.0, 0)]])
    assert out.eq(100).all()
    out = official_autoaugment(x, g, policy=[[("Invert", 0.3, 0), ("Invert", 0.0, 0)]])
    assert abs(out[:, 0, 0, 0].eq(155).float().mean().item() - 0.3) < 0.05
    # first Solarize level 0 (invert: 155), then Posterize 1 bit (128); reversed: 0 -> 255
    out = official_autoaugment(x, g, policy=[[("Solarize", 1.0, 0), ("Posterize", 1.0, 3)]])
    assert out.eq(128).all()
    out = official_autoaugment(x, g, policy=[[("Posterize", 1.0, 3), ("Solarize", 1.0, 0)]])
    assert out.eq(255).all()


def test_sub_policies_uniform_and_signs_random():
    x = torch.full((4000, 3, 2, 2), 100, dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    noop = ("Invert", 0.0, 0)
    policy = [[("Invert", 1.0, 0), noop], [("Posterize", 1.0, 10), noop],
              [("Brightness", 1.0, 0), noop], [("Brightness", 1.0, 10), noop]]
    out = official_autoaugment(x, g, policy=policy)[:, 0, 0, 0]
    for value in (155, 96, 10, 190):  # 255 - 100; 0x64 & 0xF0; 0.1 * 100; 1.9 * 100
        assert abs(out.eq(value).float().mean().item() - 0.25) < 0.03
    # TranslateX level 0.4 = 10 px, negated half the time: column 0 samples 10 or falls out
    cols = torch.arange(32, dtype=torch.uint8).expand(4000, 3, 1, 32).contiguous()
    out = official_autoaugment(cols, g, policy=[[("TranslateX", 1.0, 0.4), noop]])
    left = out[:, 0, 0, 0].eq(10)
    assert (left | out[:, 0, 0, 0].eq(G)).all()
    assert abs(left.float().mean().item() - 0.5) < 0.03


@pytest.mark.parametrize("policy", ["cifar", "imagenet", "svhn"])
def test_dense_and_grouped_slots_agree_bit_for_bit(policy):
    """Every operation is per image, so running each on the whole batch and keeping each
    image's own (dense, CUDA's default: no host read) equals grouping (the CPU's)."""
    x = cifar_batch(128, seed=2)
    grouped = official_autoaugment(x, torch.Generator().manual_seed(7), policy=policy,
                                   dense=False)
    dense = official_autoaugment(x, torch.Generator().manual_seed(7), policy=policy,
                                 dense=True)
    assert torch.equal(grouped, dense) and not torch.equal(dense, x)


def test_bad_inputs_are_rejected():
    g = torch.Generator()
    with pytest.raises(ValueError, match="uint8"):
        official_autoaugment(torch.zeros(2, 3, 4, 4), g)
    with pytest.raises(ValueError, match="uint8"):
        official_autoaugment(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), g)
    with pytest.raises(ValueError, match="unknown AutoAugment policy"):
        official_autoaugment(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), g, policy="mnist")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_a_cpu_generator():
    x = cifar_batch(512)
    for policy in ("cifar", "imagenet", "svhn"):
        cpu = official_autoaugment(x, torch.Generator().manual_seed(5), policy=policy)
        gpu = official_autoaugment(x.cuda(), torch.Generator().manual_seed(5), policy=policy)
        assert gpu.device.type == "cuda"
        # rotate's cos/sin may differ by an ulp between devices: allow a rare pixel
        assert (gpu.cpu() != cpu).float().mean().item() < 1e-3
    gen = torch.Generator(device="cuda").manual_seed(5)
    assert official_autoaugment(x.cuda(), gen).shape == x.shape


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_policy_never_waits_for_the_device():
    """The dense path with a CUDA generator reads nothing back to the host (the device
    loader runs it between training steps), and equals the grouped path."""
    x, gen = cifar_batch(256).cuda(), torch.Generator(device="cuda")
    official_autoaugment(x, gen.manual_seed(1))  # builds the cached tables first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dense = official_autoaugment(x, gen.manual_seed(2))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(dense, official_autoaugment(x, gen.manual_seed(2), dense=False))
