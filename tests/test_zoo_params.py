"""Every registered zoo variant against the parameter counts of the official code (counted from the
official repositories' model files and training logs, and the papers' tables). Models are built on the ``meta`` device: no memory, no time."""

from __future__ import annotations

import pytest
import torch

import spikeformers
from spikeformers.models import model_entry


def n_params(name, **kw):
    with torch.device("meta"):
        return sum(p.numel() for p in spikeformers.create_model(name, **kw).parameters())


# Spikformer (ZK-Zhou/spikformer): the official counts minus the LayerNorms (and DVS pos_embed / norm) that
# the official forward never uses ("-LN / dead" column); the code column for reference.
SPIKFORMER = {  # name: (code params, without the dead parameters)
    "spikformer_4_256_cifar": (4_159_274, 4_155_178),
    "spikformer_2_384_cifar": (5_768_122, 5_765_050),
    "spikformer_4_384_cifar": (9_330_874, 9_324_730),
    "spikformer_8_384": (16_828_312, 16_816_024),
    "spikformer_6_512": (23_385_640, 23_373_352),
    "spikformer_8_512": (29_705_768, 29_689_384),
    "spikformer_10_512": (36_025_896, 36_005_416),
    "spikformer_8_768": (66_363_208, 66_338_632),
    "spikformer_2_256_cifar10dvs": (2_585_610, 2_566_666),
    "spikformer_2_256_gesture": (2_585_867, 2_566_923),
}

# Spike-driven Transformer (BICLab/Spike-Driven-Transformer; code params, with h^2 = 64 dead talking-heads weights per block).
SDT = {  # name: (code params, depth)
    "sdt_8_384": (16_816_536, 8),
    "sdt_6_512": (23_373_736, 6),
    "sdt_8_512": (29_689_896, 8),
    "sdt_10_512": (36_006_056, 10),
    "sdt_8_768": (66_339_144, 8),
    "sdt_2_512_cifar": (10_233_546, 2),
    "sdt_2_256_cifar": (2_567_082, 2),
    "sdt_2_256_cifar10dvs": (2_566_794, 2),
    "sdt_2_256_gesture": (2_567_051, 2),
}

# QKFormer (zhouchenlin2096/QKFormer): exact official counts (equal to the official training logs).
QKFORMER = {
    "qkformer_4_384_cifar": 6_706_234,
    "qkformer_10_384": 16_473_688,
    "qkformer_10_512": 29_079_336,
    "qkformer_10_768": 64_962_760,
    "qkformer_2_256_cifar10dvs": 1_504_138,
    "qkformer_2_256_gesture": 1_999_371,
}

# SpikingResformer (Shi et al., CVPR 2024, table of total params in M, 3 decimals) and the state-dict
# templates of xyshi2000/SpikingResformer models/spikingresformer.py.
RESFORMER = {  # name: (planes, heads, stem, group size, PLIF, classes, table M)
    "spikingresformer_ti": ((64, 192, 384), (1, 3, 6), "imagenet", 64, False, 1000, 11.181),
    "spikingresformer_s": ((64, 256, 512), (1, 4, 8), "imagenet", 64, False, 1000, 17.814),
    "spikingresformer_m": ((64, 384, 768), (1, 6, 12), "imagenet", 64, False, 1000, 35.601),
    "spikingresformer_l": ((128, 512, 1024), (2, 8, 16), "imagenet", 64, False, 1000, 60.376),
    "spikingresformer_ti_cifar": ((64, 192, 384), (1, 3, 6), "cifar", 64, False, 10, 10.793),
    "spikingresformer_dvsg": ((32, 96, 192), (1, 3, 6), "cifar", 32, True, 11, 2.710),
}


def resformer_closed_form(planes, stem, g, plif, K, patch=(4, 2, 1), blocks=(1, 2, 3)):
    """Parameter count from the official state-dict templates (BN: weight + bias)."""
    c1 = planes[0]
    n = c1 * 3 * (49 if stem == "imagenet" else 9) + 2 * c1
    for i, (c, p, nb) in enumerate(zip(planes, patch, blocks)):
        if i:
            n += c * planes[i - 1] * 9 + 2 * c + plif                          # downsample
        dssa = 2 * c * c * p * p + 2 * 2 * c + c * c + 2 * c + 3 * plif
        gwffn = 4 * c * c + 2 * 4 * c + 4 * c * g * 9 + 2 * 4 * c + c * 4 * c + 2 * c + 3 * plif
        n += nb * (dssa + gwffn)
    return n + K * planes[-1]


EXPECTED = {
    **{k: v[1] for k, v in SPIKFORMER.items()},
    **{k: code - 64 * depth for k, (code, depth) in SDT.items()},
    **QKFORMER,
    **{k: resformer_closed_form(v[0], v[2], v[3], v[4], v[5]) for k, v in RESFORMER.items()},
}

ZOO_FAMILIES = ("spikformer_", "sdt_", "qkformer_", "spikingresformer_")


def test_every_zoo_variant_has_an_expected_count():
    zoo = [n for n in spikeformers.list_models() if n.startswith(ZOO_FAMILIES)]
    assert sorted(zoo) == sorted(EXPECTED), "registered zoo variants and the spec tables differ"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_official(name):
    assert n_params(name) == EXPECTED[name]


def test_issue_examples():
    assert n_params("spikformer_8_512") == 29_689_384
    assert n_params("qkformer_10_768") == 64_962_760
    assert n_params("qkformer_4_384_cifar") == 6_706_234
    assert n_params("sdt_8_768") == 66_339_144 - 8 * 64


@pytest.mark.parametrize("name", sorted(RESFORMER))
def test_resformer_closed_form_matches_the_spec_table(name):
    planes, _, stem, g, plif, K, table_m = RESFORMER[name]
    assert round(resformer_closed_form(planes, stem, g, plif, K) / 1e6, 3) == table_m


def test_spikformer_closed_form():
    # per block 12D^2 + 28D (4D of it dead LayerNorms), SPS, head (D+1)K.
    D, L, K = 512, 8, 1000
    sps = 9 * (3 * D // 8 + D * D // 32 + D * D // 8 + D * D // 2 + D * D) + 2 * (D // 8 + D // 4 + D // 2 + 2 * D)
    assert sps + L * (12 * D * D + 28 * D) + (D + 1) * K == SPIKFORMER["spikformer_8_512"][0]
    assert sps + L * (12 * D * D + 24 * D) + (D + 1) * K == n_params("spikformer_8_512")


DEFAULT_CLASSES = {"1000": ["spikformer_8_384", "spikformer_6_512", "spikformer_8_512", "spikformer_10_512",
                            "spikformer_8_768", "sdt_8_384", "sdt_6_512", "sdt_8_512", "sdt_10_512", "sdt_8_768",
                            "qkformer_10_384", "qkformer_10_512", "qkformer_10_768", "spikingresformer_ti",
                            "spikingresformer_s", "spikingresformer_m", "spikingresformer_l"],
                   "10": ["spikformer_4_256_cifar", "spikformer_2_384_cifar", "spikformer_4_384_cifar",
                          "spikformer_2_256_cifar10dvs", "sdt_2_256_cifar", "sdt_2_512_cifar",
                          "sdt_2_256_cifar10dvs", "qkformer_4_384_cifar", "qkformer_2_256_cifar10dvs",
                          "spikingresformer_ti_cifar"],
                   "11": ["spikformer_2_256_gesture", "sdt_2_256_gesture", "qkformer_2_256_gesture",
                          "spikingresformer_dvsg"]}


@pytest.mark.parametrize("k,names", DEFAULT_CLASSES.items())
def test_default_num_classes(k, names):
    for name in names:
        assert model_entry(name).defaults["num_classes"] == int(k), name


def test_sdt_cifar10dvs_is_dvs_mode_T10():
    d = model_entry("sdt_2_256_cifar10dvs").defaults
    assert d["dvs_mode"] is True and d["T"] == 10
