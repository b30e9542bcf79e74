"""Every command-line option reaches the engine: one table over the parser of each synthesis verb, naming each
option's engine field literally, and a check that no option of those verbs is left out of the table."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import chest_like, tiny_generator
from SyntheticContrastLib.cli import build_parser
from SyntheticContrastLib.cli.common import synthesis_options

#: (flag, value given, SynthesisOptions field, value the engine must get)
TABLE = (
    ("--stride", "7", "stride", 7),
    ("--blend", "mean", "blend", "mean"),
    ("--batch", "3", "batch_size", 3),
    ("--precision", "bf16", "precision", "bf16"),
    ("--device", "cpu", "device", "cpu"),
    ("--tile-overlap", "0.25", "tile_overlap", 0.25),
    ("--samples", "4", "samples", 4),
    ("--samples-seed", "11", "seed", 11),
    ("--backend", "openvino", "backend", "openvino"),
    ("--channels-last", "off", "channels_last", "off"),
    ("--compile", None, "compile", True),
)
#: Options of these verbs that are not engine options, with where each is tested.
ELSEWHERE = {
    "--help", "--model",  # test_cli, test_verb_defaults
    "--series", "--dicom-out", "--no-progress", "--progress-json", "--strict", "--plausibility-map",  # test_cli, test_plausibility
    "--dicom", "--output", "--seed", "--overwrite", "--include", "--exclude", "--shard",  # test_batch, test_cli (demo)
}
VERBS = {"synthesize": ["in.nii.gz", "out_synthetic.nii.gz"], "batch": ["in", "out"], "demo": []}


@pytest.mark.parametrize("verb", sorted(VERBS))
@pytest.mark.parametrize("flag, given, field, expected", TABLE)
def test_each_option_reaches_the_engines_options(verb, flag, given, field, expected):
    argv = [verb, *VERBS[verb], flag] + ([given] if given is not None else [])
    options = synthesis_options(build_parser().parse_args(argv))
    assert getattr(options, field) == expected
    defaults = synthesis_options(build_parser().parse_args([verb, *VERBS[verb]]))
    assert getattr(defaults, field) != expected  # the table's value is not the default, so the check can fail


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_no_option_of_a_synthesis_verb_is_missing_from_the_table(verb):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb").choices[verb]
    flags = {s for action in sub._actions for s in action.option_strings if s.startswith("--")}
    untested = flags - {row[0] for row in TABLE} - ELSEWHERE
    assert not untested, f"{verb}: add {sorted(untested)} to this table (engine options) or to ELSEWHERE"


def test_each_stochastic_pass_draws_its_own_dropout_masks():
    """Pass k is seeded with seed + k: with no room for test-time shifts (stride 1, no tiling) the passes differ by
    their dropout masks alone, so no two may be equal."""
    from SyntheticContrastLib.engine.encoding import WindowEncoding
    from SyntheticContrastLib.engine.inference import SynthesisOptions, iter_samples
    from SyntheticContrastLib.engine.networks import GeneratorConfig

    generator = tiny_generator(config=GeneratorConfig(ngf=2, levels=3, z_halvings=2, dropout=0.5, dropout_levels=2))
    hu = chest_like((16, 32, 32))
    options = SynthesisOptions(device="cpu", stride=1, samples=3, seed=5)
    passes = [np.array(s, copy=True) for s in iter_samples(hu, generator, WindowEncoding(), 16, options, inplane_multiple=8)]
    assert len(passes) == 3
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(passes[a] - passes[b]).max() > 1e-3, (a, b)
