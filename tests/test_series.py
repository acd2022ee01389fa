import numpy as np
import pytest

from data.series import load_builtin, load_csv

# LLMTime's protocol lengths (DESIGN §5).
EXPECTED = {
    "AirPassengers": (144, 29), "AusBeer": (211, 43), "Sunspots": (705, 141), "Wine": (176, 36), "Wooly": (119, 24)
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_series_follow_llmtime_protocol(name):
    series = load_builtin(name)
    assert (series.values.size, series.horizon) == EXPECTED[name]
    assert np.all(np.isfinite(series.values))
    assert series.context.size + series.truth.size == series.values.size


def test_airpassengers_values():
    series = load_builtin("AirPassengers")
    assert series.values[:3].tolist() == [112.0, 118.0, 132.0] and series.truth[-1] == 432.0


def test_csv_column_loads(tmp_path):
    path = tmp_path / "sales.csv"
    path.write_text("date,sales\n" + "".join(f"2020-{i},{i * 1.5}\n" for i in range(1, 21)))
    series = load_csv(path, "sales")
    assert series.values.size == 20 and series.horizon == 4 and series.values[1] == 3.0
    assert load_csv(path, 1).values.tolist() == series.values.tolist()


@pytest.mark.parametrize(
    "content, column, message",
    [
        ("", "x", "empty"),
        ("x\n1\n2\nabc\n", "x", r"row 4, column 'x': 'abc' is not a number"),
        ("x\n1\n2\nnan\n", "x", r"row 4, column 'x': 'nan' is not a finite number"),
        ("x,y\n1,\n", "y", r"row 2, column 'y': '' is not a number"),
        ("x\n1\n", "z", "no column 'z'"),
    ],
)
def test_bad_csv_names_file_row_and_column(tmp_path, content, column, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_csv(path, column)
    assert str(path) in str(err.value)
