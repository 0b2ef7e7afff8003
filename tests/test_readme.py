"""The README documents every flag and environment variable the exporter has."""
from pathlib import Path

from exporter.config import FLAGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_flag_and_env_var_is_in_the_readme():
    missing = [f"{flag} / {env}" for flag, env, *_ in FLAGS
               if f"`{flag}" not in README or f"`{env}`" not in README]
    assert not missing, f"undocumented in README.md: {missing}"


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "./dev demo" in first_block and "./dev test" in first_block
    assert "exec ./dev test" in (Path(__file__).resolve().parent.parent / ".ci/run").read_text()
