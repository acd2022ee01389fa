"""The README is the front door: short, opening with the two commands, and its Python runs as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_stays_short():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["make demo", "make test"]
    assert README.index("make demo") < README.index("## ")
    assert len(README.splitlines()) <= 200


@pytest.mark.base_model
def test_the_readme_python_runs_as_written(base_tokenizer, monkeypatch, capsys):
    snippets = re.findall(r"```python\n(.*?)```", README, re.S)
    assert snippets, "the README shows the recommended sampler from a script"
    monkeypatch.chdir(ROOT)  # paths in the README are relative to the repository root
    namespace: dict = {}  # one session: later snippets use what earlier ones loaded (lm, tokenizer)
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)
    assert namespace["forecasts"].shape == (12, namespace["series"].horizon)
    assert "effective particles" in capsys.readouterr().out
    captions, rewards = namespace["captions"], namespace["result"].sample_rewards
    assert len(captions) == 4 and rewards.tolist() == namespace["says_rising"](captions)


def test_every_config_the_readme_runs_exists():
    for path in re.findall(r"--config (\S+\.yaml)", README):
        assert (ROOT / path).is_file() or path == "my_series.yaml", path
