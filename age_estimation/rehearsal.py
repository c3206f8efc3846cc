"""UTKFace and AFAD-Full in their real on-disk formats at their real counts, with tiny random images (the
rehearsal data of `make rehearse`, experiments/drivers/rehearse.py): nothing trained on it means anything.

UTKFace (aligned & cropped): 23,708 files in one folder named `<age>_<gender>_<race>_<datetime>.jpg.chip.jpg`,
ages 1–116. AFAD-Full: 165,501 files `<age>/<111|112>/<id>-<n>.jpg` (111 male, 112 female), ages 15–72.
age_estimation/datasets.py reads both. The age histograms are not the real ones (unknown here): counts fall off
with the distance from age 26, every age present.
"""
from __future__ import annotations

import numpy as np

from experiments.engine.generated import Written, jpeg_pool, long_tail, new_tree

UTKFACE_TOTAL, UTKFACE_AGES = 23_708, (1, 116)
AFAD_TOTAL, AFAD_AGES = 165_501, (15, 72)
AFAD_GENDERS = ("111", "112")


def age_counts(total: int, ages: tuple[int, int], peak: int = 26) -> dict[int, int]:
    """age → count, summing to `total`, larger near `peak` (a long tail over the distance from it)."""
    span = list(range(ages[0], ages[1] + 1))
    order = sorted(span, key=lambda a: (abs(a - peak), a))
    return dict(zip(order, (int(c) for c in long_tail(total, len(span), 1, 0.8))))


def write_utkface(root: str, total: int = UTKFACE_TOTAL, image: int = 48, seed: int = 0) -> Written:
    """`root` (absent) becomes the UTKFace folder."""
    pool = jpeg_pool(128, [(image, image)], seed)
    rng = np.random.default_rng(seed)
    k = 0
    with new_tree(root) as (tmp, out):
        for age, n in age_counts(total, UTKFACE_AGES).items():
            for _ in range(n):
                stamp = 20170109000000000 + int(rng.integers(0, 10**9)) * 100 + k % 100
                (tmp / f"{age}_{k % 2}_{k % 5}_{stamp}.jpg.chip.jpg").write_bytes(pool[k % len(pool)])
                k += 1
    return out["written"]


def write_afad(root: str, total: int = AFAD_TOTAL, image: int = 48, seed: int = 0) -> Written:
    """`root` (absent) becomes the AFAD-Full folder."""
    pool = jpeg_pool(128, [(image, image)], seed)
    k = 0
    with new_tree(root) as (tmp, out):
        for age, n in sorted(age_counts(total, AFAD_AGES).items()):
            for gender in AFAD_GENDERS:
                (tmp / str(age) / gender).mkdir(parents=True)
            for i in range(n):
                gender = AFAD_GENDERS[i % 2]
                (tmp / str(age) / gender / f"{100000 + k}-{i % 3}.jpg").write_bytes(pool[k % len(pool)])
                k += 1
    return out["written"]
