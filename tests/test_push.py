"""`slm push`: an export (or a checkpoint exported on the way) uploaded with huggingface_hub.

No network here: the upload path runs against a stand-in HfApi that records what it was given and
which files the folder held; offline mode, an unreachable Hub and a missing token must each stop the
push with one line, before anything is uploaded.
"""

from __future__ import annotations

import fnmatch
import types
from pathlib import Path

import pytest

hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("huggingface_hub.constants")  # loaded lazily otherwise: the tests patch its values
pytest.importorskip("huggingface_hub.errors")

from slmkit import api  # noqa: E402
from slmkit.errors import SlmError  # noqa: E402
from slmkit.model import ModelConfig, Transformer, save_model  # noqa: E402
from slmkit.tokenizer import train_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint with a character tokenizer saved beside it."""
    root = tmp_path_factory.mktemp("push")
    tokenizer = train_tokenizer(["the king speaks to the queen"], "char")
    files = tokenizer.save(root / "tok")
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, n_layers=1, d_model=16, n_heads=2, d_mlp=32))
    return save_model(model, root / "ckpt", extra_files={p.name: p for p in files.iterdir()})


@pytest.fixture
def no_hf_env(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)


class FakeHfApi:
    """Records create_repo and upload_folder, and the files the folder held when it was uploaded."""

    calls: list = []

    def __init__(self, endpoint=None, token=None):
        FakeHfApi.calls.append(("init", {"endpoint": endpoint, "token": token}))

    def whoami(self):
        return {"name": "someone"}

    def create_repo(self, repo_id, **options):
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **options}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, ignore_patterns=(), **options):
        folder = Path(folder_path)
        files = {p.name: p.read_bytes() for p in folder.iterdir()
                 if not any(fnmatch.fnmatch(p.name, pattern) for pattern in ignore_patterns)}
        FakeHfApi.calls.append(("upload_folder", {"repo_id": repo_id, "files": files, **options}))


@pytest.fixture
def fake_hub(monkeypatch, no_hf_env):
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_of_a_checkpoint_exports_it_and_uploads_weights_config_tokenizer_generation_config_and_card(
        checkpoint, fake_hub):
    url = api.push(checkpoint, "someone/tiny", private=True, token="hf_test", audit=False)
    assert url == "https://huggingface.co/someone/tiny"
    (_, init), (_, created), (_, uploaded) = fake_hub.calls
    assert init["token"] == "hf_test"
    assert created == {"repo_id": "someone/tiny", "private": True, "exist_ok": True, "repo_type": "model"}
    files = uploaded["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md"} <= set(files)
    assert ".slmkit-export-hf" not in files  # the export's own mark stays home
    assert b'from_pretrained("someone/tiny")' in files["README.md"]
    assert b'"model_type": "llama"' in files["config.json"]


def test_push_of_an_export_directory_uploads_it_as_it_is(checkpoint, fake_hub, tmp_path):
    out = api.export_hf(checkpoint, tmp_path / "hf", audit=False)
    (out / "README.md").write_text("my own card\n")
    api.push(out, "tiny", token="hf_test")
    files = fake_hub.calls[-1][1]["files"]
    assert files["README.md"] == b"my own card\n"
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()


def test_push_offline_says_so_in_one_line_and_how_to_push_later(checkpoint, monkeypatch, no_hf_env):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SlmError) as error:
        api.push(checkpoint, "someone/tiny", token="hf_test")
    message = str(error.value)
    assert message.startswith("cannot reach huggingface.co: offline mode is on")
    assert f"push later from an online machine: slm push {checkpoint} someone/tiny" in message
    assert "\n" not in message


def test_push_to_an_unreachable_hub_says_it_cannot_reach_it(checkpoint, no_hf_env):
    with pytest.raises(SlmError, match=r"^cannot reach 127\.0\.0\.1:9: .*; push later from an online machine: "
                                       r"slm push .* someone/tiny$"):
        api.push(checkpoint, "someone/tiny", token="hf_test", endpoint="http://127.0.0.1:9", audit=False)


def test_push_without_a_token_says_how_to_log_in(checkpoint, monkeypatch, no_hf_env):
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(SlmError, match=r"^no Hugging Face token: run `hf auth login`.* or pass --token$"):
        api.push(checkpoint, "someone/tiny")


def _http_error(status: int, message: str):
    response = types.SimpleNamespace(status_code=status, headers={}, request=None)
    return hub.errors.HfHubHTTPError(f"{status} Client Error", response=response, server_message=message)


def test_push_reports_a_refused_token_before_exporting(checkpoint, monkeypatch, fake_hub):
    def refuse(self):
        raise _http_error(401, "Invalid credentials in Authorization header")

    monkeypatch.setattr(FakeHfApi, "whoami", refuse)
    with pytest.raises(SlmError, match=r"^the Hub refused the token \(401 Unauthorized: Invalid credentials"):
        api.push(checkpoint, "someone/tiny", token="hf_bad", audit=False)
    assert [call for call, _ in fake_hub.calls] == ["init"]  # no repository created, nothing uploaded


def test_push_reports_a_token_without_write_access(checkpoint, monkeypatch, fake_hub):
    def forbid(self, repo_id, **options):
        raise _http_error(403, "You don't have the rights to create a model under the namespace \"org\"")

    monkeypatch.setattr(FakeHfApi, "create_repo", forbid)
    with pytest.raises(SlmError, match=r"^the token may not write to org/tiny \(403 Forbidden: .*\); use a token "
                                       r"with write access"):
        api.push(checkpoint, "org/tiny", token="hf_read_only", audit=False)


@pytest.mark.parametrize("repo", ["two words", "a/b/c", "-lead", "a/../b"])
def test_push_refuses_a_bad_repository_id(checkpoint, repo, fake_hub):
    with pytest.raises(SlmError, match="is not valid: write NAME or OWNER/NAME"):
        api.push(checkpoint, repo, token="hf_test")
    assert fake_hub.calls == []


def test_push_refuses_a_missing_source_before_the_network(tmp_path, fake_hub):
    with pytest.raises(SlmError, match="checkpoint not found"):
        api.push(tmp_path / "nothing", "someone/tiny", token="hf_test")
    assert fake_hub.calls == []


def test_cli_push_offline_is_one_line_and_exit_code_2(checkpoint, monkeypatch, no_hf_env, capsys):
    from slmkit.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(checkpoint), "someone/tiny", "--token", "hf_test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach huggingface.co") and err.count("\n") == 1


@pytest.fixture(scope="module")
def adapter(checkpoint, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny checkpoint, with its tokenizer."""
    pytest.importorskip("peft")
    from slmkit.finetune import LoraOptions, add_lora, save_adapter
    from slmkit.model import load_model

    options = LoraOptions(rank=2, targets=("qkv",))
    model = add_lora(load_model(checkpoint), options)
    return save_adapter(model, tmp_path_factory.mktemp("push-adapter") / "adapter", checkpoint, options,
                        tokenizer_dir=checkpoint)


def test_push_of_an_slmkit_adapter_uploads_a_peft_adapter_naming_the_base_repository(adapter, fake_hub):
    import json

    api.push(adapter, "someone/tiny-qa", token="hf_test", base_model="someone/tiny")
    files = fake_hub.calls[-1][1]["files"]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.json"} <= set(files)
    assert not {".slmkit-export-hf-adapter", "slmkit_adapter.json", "config.json"} & set(files)
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == "someone/tiny"
    assert sorted(config["target_modules"]) == ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"]


def test_push_of_an_adapter_export_uploads_it_as_it_is(adapter, fake_hub, tmp_path):
    out = api.export_adapter_hf(adapter, tmp_path / "hf-adapter", base_model="someone/tiny")
    api.push(out, "someone/tiny-qa", token="hf_test")
    with pytest.raises(SlmError, match="base_model names the base of an slmkit LoRA adapter"):
        api.push(out, "someone/tiny-qa", token="hf_test", base_model="someone/other")  # not used: refused
    files = fake_hub.calls[-1][1]["files"]
    assert files["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    assert ".slmkit-export-hf-adapter" not in files
