import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = SHARED / "shakespeare.txt"


def pytest_configure(config):
    # Tests never download: built-ins come from ../shared/data, and the cache (downloads, compiled
    # kernels) is a fresh folder per test session, shared by the CLI subprocesses the tests start.
    import tempfile

    os.environ.setdefault("CHARRNN_DATA_DIR", str(SHARED))
    os.environ["CHARRNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="charrnn-test-cache-")


@pytest.fixture(scope="session")
def shakespeare() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is missing (the tutorial's corpus, kept beside the repo)")
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def small_text(shakespeare, tmp_path_factory) -> Path:
    """The first 20,000 characters of Shakespeare: enough to learn something in seconds."""
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(shakespeare[:20_000], encoding="utf-8")
    return path


TINY = dict(embedding_size=16, hidden_size=32)


@pytest.fixture(scope="session")
def tiny_run(small_text, tmp_path_factory) -> Path:
    """A trained tiny run directory shared by the read-only tests."""
    from charrnn import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(text=str(small_text), epochs=2, batch_size=16, seq_len=50, seed=3)
    Trainer.create(run, config, TINY, out=open(os.devnull, "w")).fit()
    return run


def run_cli(*args: str, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """`charrnn ARGS` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
