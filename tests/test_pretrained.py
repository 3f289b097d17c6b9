"""ImageNet weights for the encoder: torch.hub's real download path, served from file:// addresses."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from capcli.errors import CapcliError
from capcli.model import pretrained as pretrained_module
from capcli.model.encoder import Encoder
from capcli.model.pretrained import hub_weights_path, load_pretrained
from capcli.runtime.torch_compat import import_torchvision

torchvision = import_torchvision()  # also where its compiled operators do not load (a CPU torch)

_STAGES = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


def _serve(monkeypatch, url: str) -> None:
    """Make ``url`` the address of the ImageNet weights; the download is torch.hub's own."""
    monkeypatch.setattr(pretrained_module, "imagenet_url", lambda name: url)


def _saved_weights(folder, prefix: str | None = None) -> tuple[dict, Path]:
    """A random resnet18 state dict saved as ``resnet18-<sha256 prefix>.pth`` (or ``prefix``)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    source = folder / f"resnet18-{prefix or digest[:8]}.pth"
    raw.rename(source)
    return state, source


def _assert_loaded(encoder: Encoder, reference: dict) -> None:
    loaded = encoder.resnet.state_dict()
    assert len(loaded) == len(reference) - 2  # all but fc.weight, fc.bias
    for key, value in loaded.items():
        index, rest = key.split(".", 1)
        torch.testing.assert_close(value, reference[f"{_STAGES[int(index)]}.{rest}"], rtol=0, atol=0)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert len(message.splitlines()) == 1
    return message


def test_default_address_is_torchvisions_imagenet_weights(torch_home):
    assert pretrained_module.imagenet_url("resnet18") == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert hub_weights_path("resnet18") == str(torch_home / "resnet18-f37072fd.pth")


def test_downloads_into_the_hub_cache_then_uses_it(torch_home, tmp_path, monkeypatch, capsys):
    reference, source = _saved_weights(tmp_path / "server")
    _serve(monkeypatch, source.as_uri())
    expected = torch_home / source.name
    encoder = Encoder("resnet18")
    assert load_pretrained(encoder) == str(expected)
    assert expected.is_file() and os.listdir(torch_home) == [expected.name]  # no temporary file left
    assert hashlib.sha256(expected.read_bytes()).hexdigest().startswith(expected.name[9:17])
    _assert_loaded(encoder, reference)
    printed = capsys.readouterr()
    assert printed.out == "" and "Downloading" in printed.err  # a service leaves stdout to the CLI

    source.unlink()  # the server is gone: the cached copy serves
    again = Encoder("resnet18")
    assert load_pretrained(again, progress=False) == str(expected)
    _assert_loaded(again, reference)


@pytest.mark.parametrize("where", ["missing file", "refused port"])
def test_offline_names_the_cache_path_the_address_and_the_way_out(torch_home, tmp_path, monkeypatch, where):
    url = ((tmp_path / "nowhere" / "resnet18-f37072fd.pth").as_uri() if where == "missing file"
           else "http://127.0.0.1:9/models/resnet18-f37072fd.pth")  # loopback port 9 refuses at once
    _serve(monkeypatch, url)
    with pytest.raises(CapcliError) as exc_info:
        load_pretrained(Encoder("resnet18"), progress=False)
    message = _one_line(exc_info)
    assert str(torch_home / "resnet18-f37072fd.pth") in message
    assert url in message and "--pretrained-weights FILE" in message
    assert os.listdir(torch_home) == []


def test_hash_mismatch_is_rejected_and_leaves_nothing_in_the_cache(torch_home, tmp_path, monkeypatch):
    _, source = _saved_weights(tmp_path / "server", prefix="0badf00d")  # not the file's hash
    url = source.as_uri()
    _serve(monkeypatch, url)
    encoder = Encoder("resnet18")
    before = {k: v.clone() for k, v in encoder.resnet.state_dict().items()}
    with pytest.raises(CapcliError) as exc_info:
        load_pretrained(encoder, progress=False)
    message = _one_line(exc_info)
    assert url in message and "invalid hash value" in message and "--pretrained-weights FILE" in message
    assert os.listdir(torch_home) == []
    for key, value in encoder.resnet.state_dict().items():
        assert torch.equal(value, before[key])


def test_corrupt_cached_file_is_named_with_the_advice_to_delete_it(torch_home, tmp_path, monkeypatch):
    _serve(monkeypatch, (tmp_path / "nowhere" / "resnet18-f37072fd.pth").as_uri())
    cached = torch_home / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(CapcliError) as exc_info:
        load_pretrained(Encoder("resnet18"), progress=False)
    message = _one_line(exc_info)
    assert str(cached) in message and "delete" in message


def test_given_weights_file(torch_home, tmp_path, monkeypatch):
    _serve(monkeypatch, "http://127.0.0.1:9/never-asked.pth")
    reference, source = _saved_weights(tmp_path / "given")
    given = str(source)
    encoder = Encoder("resnet18")
    assert load_pretrained(encoder, given) == given
    _assert_loaded(encoder, reference)
    with pytest.raises(CapcliError) as exc_info:
        load_pretrained(encoder, str(tmp_path / "absent.pth"))
    assert str(tmp_path / "absent.pth") in _one_line(exc_info)
    fifo = tmp_path / "weights.fifo"
    os.mkfifo(fifo)  # opened plainly, a FIFO blocks until a writer comes: for ever
    with pytest.raises(CapcliError) as exc_info:
        load_pretrained(encoder, str(fifo))
    assert str(fifo) in _one_line(exc_info) and "not a regular file" in _one_line(exc_info)
    assert not torch_home.exists()  # a given file never touches the hub cache


def test_weights_of_another_resnet_do_not_fit(torch_home, tmp_path, monkeypatch):
    _, source = _saved_weights(tmp_path / "server")
    _serve(monkeypatch, source.as_uri())
    with pytest.raises(CapcliError) as exc_info:
        load_pretrained(Encoder("resnet34"), progress=False)
    assert "do not fit resnet34" in _one_line(exc_info)


def test_unwritable_cache_is_a_disk_error_not_a_download_error(tmp_path, monkeypatch):
    (tmp_path / "home").write_text("a file where the cache folder should be")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    _serve(monkeypatch, "http://127.0.0.1:9/never-asked-18-f37072fd.pth")
    with pytest.raises(CapcliError) as exc_info:
        load_pretrained(Encoder("resnet18"), progress=False)
    message = _one_line(exc_info)
    assert str(tmp_path / "home") in message and "not a folder" in message and "download" not in message
