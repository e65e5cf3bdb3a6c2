import pytest
import yaml

from flame.app.cli import main
from flame.config import ConfigError, load_config, profile_names, read_params, repo_root


def test_all_profiles_validate():
    names = profile_names()
    assert {"tiny", "small", "paper", "clip"} <= set(names)
    for name in names:
        cfg = load_config(profile=name)
        assert cfg.profile == name
    assert load_config(profile="paper").text.layer == 39
    assert load_config(profile="clip").text.mode == "clip"


def test_default_profile_is_tiny():
    cfg = load_config()
    assert cfg.profile == "tiny"
    assert cfg.image.model == "vit_tiny_patch16_224" and cfg.image.img_size == 64


def test_bad_value_and_unknown_key_name_the_key():
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"train": {"lr": -1, "bogus": 1}})
    msg = str(err.value)
    assert "train.lr" in msg and "greater than 0" in msg
    assert "train.bogus" in msg


def test_unknown_profile_lists_known(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*tiny"):
        load_config(profile="nope")


def test_view_with_unknown_facet_set_fails(tmp_path):
    with pytest.raises(ConfigError, match="views.0.facet_set|views\\[0\\].facet_set"):
        load_config(overrides={"text": {"views": [{"field": "caption", "facet_set": "nope"}]}})


def test_extends_cycle_is_reported(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"profiles": {"a": {"extends": "b"}, "b": {"extends": "a"}}}))
    with pytest.raises(ConfigError, match="cycle"):
        load_config(p, "a")


def test_flat_dict_has_every_section():
    flat = load_config().to_flat_dict()
    assert flat["train.lr"] == 5e-4
    assert "text.facet_sets.long.facets" in flat


def _params_file(folder, edit=None):
    params = read_params(repo_root() / "params.yaml")
    if edit:
        edit(params)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def test_top_level_typo_is_refused_with_did_you_mean(tmp_path, capsys):
    def typo(params):
        params["profil"] = params.pop("profile")

    path = _params_file(tmp_path, typo)
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "flame config: error:" in err and str(path) in err
    assert "unknown top-level key 'profil'" in err and "did you mean 'profile'?" in err


def test_unknown_key_in_a_profile_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"train": {"warmup_step": 3}})
    assert "train.warmup_step" in str(err.value) and "did you mean 'warmup_steps'?" in str(err.value)

    def nested_typos(params):
        params["profiles"]["tiny"]["text"]["facet_sets"]["raw"]["prefx"] = "x"
        params["profiles"]["clip"]["extend"] = params["profiles"]["clip"].pop("extends")

    path = _params_file(tmp_path, nested_typos)
    with pytest.raises(ConfigError, match=r"text\.facet_sets\.raw\.prefx: .*did you mean 'prefix'\?"):
        load_config(path, "tiny")
    with pytest.raises(ConfigError, match=r"extend: .*did you mean 'extends'\?"):
        load_config(path, "clip")


def test_unknown_profile_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown profile 'smal' .*did you mean 'small'\?"):
        load_config(profile="smal")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "profile: tiny\n".encode("utf-16")],
                         ids=["png", "utf-16"])
def test_a_binary_config_file_is_named(tmp_path, capsys, content):
    path = tmp_path / "some.png"
    path.write_bytes(content)
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not a text YAML file (" in err


def test_relative_paths_resolve_against_the_params_folder(tmp_path, monkeypatch):
    def relative(params):
        params["profiles"]["tiny"]["text"]["cache_dir"] = "cache/llm"

    path = _params_file(tmp_path / "project", relative)
    monkeypatch.chdir(tmp_path)  # elsewhere: the current folder must not matter
    project = tmp_path / "project"
    cfg = load_config(path)
    assert cfg.tracking.tracking_uri == f"sqlite:///{project / 'mlflow.db'}"
    assert cfg.orchestration.storage_root == str(project / "data")
    assert cfg.orchestration.incoming_dir == str(project / "data" / "incoming")
    assert cfg.orchestration.manifests == [str(project / "data" / "sample" / "train.jsonl")]
    assert cfg.text.cache_dir == str(project / "cache" / "llm")
    assert load_config().tracking.tracking_uri == f"sqlite:///{repo_root() / 'mlflow.db'}"


def test_flame_config_writes_paths_as_written(tmp_path, capsys):
    # params.resolved.yaml is committed: absolute, machine-specific paths would make DVC see
    # changed parameters in every other clone.
    path = _params_file(tmp_path)
    assert main(["config", "--config", str(path)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["tracking"]["tracking_uri"] == "sqlite:///mlflow.db"
    assert resolved["orchestration"]["storage_root"] == "data"
