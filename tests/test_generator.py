"""The synthetic context generator: seeded, index-stable, and every family keeps appearing."""

from collections import Counter

import numpy as np
import pytest

from data.generator import FAMILIES, generate, generate_one, main


def test_generator_is_seeded_and_each_series_depends_only_on_its_index():
    a, b = generate(7, 20, 48), generate(7, 20, 48)
    assert all(np.array_equal(x.values, y.values) and x.families == y.families for x, y in zip(a, b))
    assert np.array_equal(generate(7, 5, 48, start=15)[0].values, a[15].values)  # growing the set keeps the old ones
    assert np.array_equal(generate_one(7, 3, 48).values, a[3].values)
    assert not np.array_equal(generate(8, 1, 48)[0].values, a[0].values)


def test_every_family_appears_and_the_values_span_scales_and_signs():
    series = generate(0, 400, 48)
    counts = Counter(f for s in series for f in s.families)
    assert set(counts) == set(FAMILIES)
    assert min(counts.values()) >= 20  # each family at least 5% of the draws (measured minimum: 73 of 500)
    assert all(s.values.shape == (48,) and np.isfinite(s.values).all() for s in series)
    assert all((s.values > 0).all() for s in series if "positive" in s.families)
    signs = [s for s in series if "sign_changing" in s.families]
    assert all(s.values.min() < 0 < s.values.max() for s in signs)
    scales = np.log10([np.abs(s.values).max() for s in series])
    assert scales.min() < -1 and scales.max() > 5  # 1e-2 .. 1e6


def test_generator_command_plots_a_grid_and_names_bad_input(tmp_path, capsys):
    assert main(["--seed", "1", "--n", "6", "--plot", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["--n", "0", "--plot", str(tmp_path / "x.png")])
    assert "--n must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="length >= 8"):
        generate(0, 1, 4)
