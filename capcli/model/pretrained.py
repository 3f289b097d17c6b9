"""Pretrained weights for every encoder: torchvision's ImageNet weights through its weights API and
torch.hub (downloaded once into the hub cache, hash-checked), CLIP's through open_clip's own
loader, or a file given with ``--pretrained-weights`` (machines without internet)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from http.client import HTTPException
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from capcli.errors import CapcliError, first_line, os_error_message
from capcli.model import clip
from capcli.model.backbones import classifier_free, torchvision_weights
from capcli.model.clip import is_clip
from capcli.model.encoder import SMALL, WEIGHTS, Encoder, torchvision_resnet
from capcli.model.grid import GridEncoder
from capcli.runtime.torch_compat import import_torchvision
from capcli.safeio import open_regular


def imagenet_url(name: str) -> str:
    """The address of torchvision's ImageNet weights for encoder ``name``: ``IMAGENET1K_V1`` for a
    ResNet (the seed's), the default (best) weights for the other torchvision models."""
    if name in WEIGHTS:
        return getattr(import_torchvision().models, WEIGHTS[name]).IMAGENET1K_V1.url
    return torchvision_weights(name).url


def _cache_path(url: str) -> str:
    # torch.hub.load_state_dict_from_url's naming: <hub dir>/checkpoints/<the URL's file name>
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def hub_weights_path(name: str) -> str:
    """Where torchvision's ImageNet weights for ``name`` live in the torch hub cache."""
    return _cache_path(imagenet_url(name))


def load_pretrained(encoder: Encoder, weights_file: str | None = None, progress: bool = True) -> str:
    """Load ImageNet weights into ``encoder`` from ``weights_file``, or torchvision's download.

    Without ``weights_file`` the weights come through torch.hub, as torchvision's
    ``WeightsEnum.get_state_dict`` fetches them: from the hub cache
    (``$TORCH_HOME/hub/checkpoints``), downloaded there first when absent, the SHA-256 prefix in
    the file name checked, the file moved into place only once complete.

    Args:
        encoder: the encoder whose ResNet receives the weights (the classifier is dropped).
        weights_file: a state dict saved with ``torch.save``, for machines without internet.
        progress: show torch.hub's download progress bar (on stderr).

    Returns:
        The file the weights came from.

    Raises:
        CapcliError: a missing, corrupt or unfitting file, or a failed download (naming the
            cache path, the address and ``--pretrained-weights FILE``).
    """
    if encoder.name == SMALL:
        raise CapcliError(f"{SMALL} has no ImageNet weights; train it from scratch with --no-pretrained")
    if is_clip(encoder.name) and not weights_file:
        path, state = clip.download_state(encoder.name)
    elif weights_file:
        path, state = weights_file, _load_file(weights_file)
    else:
        path, state = _download(encoder.name, progress)
    if not isinstance(state, dict):
        raise CapcliError(f"{path}: not a state dict of {encoder.name} weights ({type(state).__name__})")
    if isinstance(encoder, GridEncoder):
        tower = clip.tower_state(state) if is_clip(encoder.name) else classifier_free(encoder.name, state)
        _fit(encoder.backbone, tower, path, encoder.name)
        return path
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    resnet = torchvision_resnet(encoder.name)(weights=None)
    del resnet.fc
    _fit(resnet, state, path, encoder.name)
    encoder.resnet.load_state_dict(nn.Sequential(*list(resnet.children())[:-1]).state_dict())
    return path


def _fit(backbone: nn.Module, state: dict, path: str, name: str) -> None:
    """Load ``state`` into ``backbone``, every weight of it and nothing else."""
    if not state:
        raise CapcliError(f"{path}: holds no {name} weights")
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise CapcliError(f"{path}: weights do not fit {name}: {str(exc).splitlines()[0]}") from None


def _load_file(path: str) -> dict:
    if not os.path.exists(path):
        raise CapcliError(f"pretrained weights not found: {path}")
    try:
        with open_regular(path) as f:  # a FIFO or a folder: one line, never a hang
            if path.endswith(".safetensors"):
                from safetensors.torch import load

                return load(f.read())
            return torch.load(f, map_location="cpu", weights_only=True)
    except CapcliError:
        raise
    except Exception as exc:  # a corrupt or unsafe file: report it, never run it
        raise CapcliError(f"{path}: not a loadable weights file ({type(exc).__name__})") from None


def _download(name: str, progress: bool) -> tuple[str, dict]:
    """The cache path and state dict of torchvision's ImageNet weights for ``name``."""
    url = imagenet_url(name)
    path = _cache_path(url)
    try:
        # torch.hub prints "Downloading: ..." on stdout; a service leaves stdout to the CLI
        with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress,
                                                       check_hash=True, weights_only=True)
    except Exception as exc:
        error = _hub_error(exc, name, url, path)
        if error is None:
            raise
        raise error from None
    return path, state


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def _hub_error(exc: Exception, name: str, url: str, path: str) -> CapcliError | None:
    """The user's message for a failure of ``load_state_dict_from_url``; None for a bug."""
    if os.path.exists(path):  # torch.hub moves a download there only once complete and hash-checked
        if isinstance(exc, OSError):
            return CapcliError(os_error_message(exc))
        return CapcliError(f"{path}: cached weights are not loadable ({type(exc).__name__}: "
                           f"{first_line(exc, 120)}); delete the file to download it again")
    if isinstance(exc, RuntimeError) and str(exc).startswith("invalid hash value"):
        return CapcliError(f"{url}: download rejected, {first_line(exc)}; nothing saved to {path}; "
                           "try again, or pass --pretrained-weights FILE")
    if isinstance(exc, OSError) and not isinstance(exc, URLError) and exc.errno in _DISK_ERRNOS:
        message = os_error_message(exc)
        return CapcliError(message if exc.filename else f"{path}: {message}")
    if isinstance(exc, (OSError, HTTPException)):  # URLError, refused, reset, timed out, cut short
        reason = exc.reason if type(exc) is URLError else exc
        return CapcliError(f"could not download {name}'s ImageNet weights from {url} to {path} "
                           f"({first_line(reason)}); connect to the internet, or pass --pretrained-weights FILE "
                           "(`capcli env` lists the weights cached here)")
    return None
