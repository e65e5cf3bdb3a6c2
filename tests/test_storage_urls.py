"""Storage as a URL: the configuration keeps an object-store root as typed, every path under it is
a URL; a remote object is read through the content-keyed cache (never stale), written whole, and
one writer holds a checkpoint folder. A direct database tracking URI with nowhere shared for its
artifacts is refused before anything runs."""

import pytest

from flame.config import load_config
from flame.errors import FlameError
from flame.locations import fetch, fetch_tree, location, publish_tree, staged_file
from flame.mlflow.store import check_shared_artifacts
from flame.paths import resolve_path
from flame.storage import StoragePaths


def test_an_object_store_root_is_kept_as_typed_and_paths_under_it_are_urls(tmp_path):
    assert resolve_path("s3://bucket/prefix/data", tmp_path) == "s3://bucket/prefix/data"
    assert resolve_path("data", tmp_path) == str(tmp_path / "data")
    config = load_config(profile="tiny", overrides={"orchestration": {"storage_root": "s3://bucket/prefix/data"}})
    paths = StoragePaths(config.orchestration.storage_root)
    assert paths.remote and str(paths.shard("a-00000")) == "s3://bucket/prefix/data/shards/a-00000.tar"
    assert str(paths.model("abc") / "model.safetensors") == "s3://bucket/prefix/data/models/abc/model.safetensors"
    assert not StoragePaths(tmp_path).remote


@pytest.mark.parametrize("uri, location_, expected", [
    ("postgresql://flame:secret@db/mlflow", "s3://b/m", "name the database driver"),
    ("postgresql+psycopg2://flame:secret@db/mlflow", None, "would stay on each machine's disk"),
    ("postgresql+psycopg2://flame:secret@db/mlflow", "/shared/mlruns", "would stay on each machine's disk"),
])
def test_a_direct_database_tracking_uri_without_a_shared_artifact_root_is_refused(uri, location_, expected):
    with pytest.raises(FlameError, match=expected) as error:
        check_shared_artifacts(uri, location_)
    assert "secret" not in str(error.value)


def test_servers_and_local_stores_and_a_database_with_object_storage_are_accepted():
    check_shared_artifacts("postgresql+psycopg2://flame:flame@db/mlflow", "s3://bucket/mlflow")
    check_shared_artifacts("http://127.0.0.1:5000", None)
    check_shared_artifacts("sqlite:////tmp/mlflow.db", None)


def test_the_cli_refuses_a_direct_database_uri_before_anything_runs(tmp_path, capsys):
    from flame.app.cli import main

    code = main(["registry", "show", "--tracking-uri", "postgresql+psycopg2://flame:secret@127.0.0.1:1/mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and "mlflow server" in err and "secret" not in err, err


@pytest.mark.services
def test_remote_objects_are_read_through_a_cache_that_is_never_stale(services, tmp_path, monkeypatch):
    for name, value in services.aws_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FLAME_CACHE", str(tmp_path / "cache"))
    root = location(services.unique_prefix("cache"))
    with staged_file(root / "a" / "x.bin") as local:
        local.write_bytes(b"first")
    first = fetch(root / "a" / "x.bin")
    assert first.read_bytes() == b"first" and first.is_relative_to(tmp_path / "cache")
    assert fetch(root / "a" / "x.bin") == first  # unchanged: read once
    (root / "a" / "x.bin").write_bytes(b"second, longer")
    second = fetch(root / "a" / "x.bin")
    assert second != first and second.read_bytes() == b"second, longer"

    folder = tmp_path / "made"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "y.txt").write_text("y")
    (folder / "z.txt").write_text("z")
    publish_tree(folder, root / "tree")
    view = fetch_tree(root / "tree")
    assert sorted(p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file()) == ["sub/y.txt", "z.txt"]
    assert (view / "sub" / "y.txt").read_text() == "y"


@pytest.mark.services
def test_one_writer_per_checkpoint_folder_in_object_storage(services, monkeypatch):
    from orchestration.folder_lock import exclusive

    for name, value in services.aws_env.items():
        monkeypatch.setenv(name, value)
    lock = location(services.unique_prefix("lock")) / "models" / "abc.lock"
    with exclusive(lock, "run one", "checkpoint folder abc"):
        assert lock.read_text() == "run one"
        with pytest.raises(FlameError, match="in use by run one"):
            with exclusive(lock, "run two", "checkpoint folder abc"):
                pass
        with exclusive(lock, "run three", "checkpoint folder abc", is_stale=lambda holder: holder == "run one"):
            assert lock.read_text() == "run three"  # the holder's run had ended: taken over
    assert not lock.exists()
