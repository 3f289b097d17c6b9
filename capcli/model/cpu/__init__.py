"""capcli's CPU kernels: faster forms of the encoder's inference, the attention and the decoding
LSTM cell, each computing the function its textbook module in ``capcli.model`` computes.

Nothing here runs unless :func:`enable` is called, once, after the device is known (``train``,
``a2c``, the captioning service and ``bench`` do). Every kernel may decline a call (it returns
None, and the textbook form runs); a kernel that fails, e.g. an operator this torch build lacks
or calls differently, is switched off with one debug line and the textbook form runs from then
on. (The sigmoid form's backward pass runs inside ``loss.backward()``, past any fallback; it uses
public operators only.) They switch on by what this torch can do, not by its version: before its
first use in a process each kernel checks itself against the textbook form on a tiny model
(:mod:`capcli.model.cpu.selfcheck`) and stays off, with one debug line, where the two disagree.
``CAPCLI_CPU_KERNELS=0`` keeps them all off.
Figures and how to reproduce them: docs/performance.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch

from capcli.model.cpu import attention as cpu_attention
from capcli.model.cpu import encoder as cpu_encoder
from capcli.model.cpu.lstm import TableCell

SWITCH = "CAPCLI_CPU_KERNELS"  # "0": the textbook forms only
_FAILURES = (RuntimeError, TypeError, AttributeError, NotImplementedError, ValueError)
log = logging.getLogger(__name__)


def switched_off() -> bool:
    return os.environ.get(SWITCH, "").strip() == "0"


def status() -> dict[str, str]:
    """Each kernel group's state on this machine's CPU: "on", or why it is off."""
    from capcli.model.cpu import selfcheck

    if switched_off():
        return {"encoder": f"off ({SWITCH}=0)", "decoder": f"off ({SWITCH}=0)"}
    problems = {"encoder": selfcheck.encoder_problem(), "decoder": selfcheck.decoder_problem(DecoderKernels)}
    return {part: "on" if problem is None else f"off ({problem})" for part, problem in problems.items()}


def enable(device: torch.device, encoder=None, decoder=None, compiled: bool = False) -> bool:
    """Give ``encoder`` and ``decoder`` (either may be None) the CPU kernels when they run on the
    CPU; returns whether they got them. ``compiled``: the decoder's step is compiled, so it keeps
    the textbook form (the compiler fuses it itself)."""
    for module in (encoder, decoder):
        if module is not None:
            module.kernels = None
    if device.type != "cpu":
        return False
    if switched_off():
        log.debug("CPU kernels off: %s=0", SWITCH)
        return False
    from capcli.model.cpu import selfcheck

    if encoder is not None and hasattr(encoder, "resnet"):  # the fused encoder is a ResNet's
        encoder.kernels = EncoderKernels() if _trusted("fused encoder", selfcheck.encoder_problem) else None
    if decoder is not None and not compiled:
        trusted = _trusted("attention and cell", lambda: selfcheck.decoder_problem(DecoderKernels))
        decoder.kernels = DecoderKernels() if trusted else None
    return True


def _trusted(name: str, problem) -> bool:
    found = problem()
    if found is not None:
        log.debug("CPU kernels off (%s): %s", name, found)
    return found is None


def disable(encoder, decoder) -> None:
    """Back to the textbook forms."""
    encoder.kernels = decoder.kernels = None


class _Kernels:
    """Switches itself off, with one debug line, the first time a kernel fails."""

    def __init__(self) -> None:
        self.on = True

    def _run(self, name: str, kernel, *args, declined=None):
        """``kernel(*args)``, or ``declined`` once the kernels are off or when this call fails."""
        if not self.on:
            return declined
        try:
            return kernel(*args)
        except _FAILURES as exc:
            log.debug("CPU kernel %s failed (%s: %s); using the textbook form", name, type(exc).__name__, exc)
            self.on = False
            return declined


class EncoderKernels(_Kernels):
    def __init__(self) -> None:
        super().__init__()
        self.fused = cpu_encoder.FusedEncoder()

    def infer(self, encoder, images: torch.Tensor) -> torch.Tensor | None:
        return self._run("fused encoder", self.fused, encoder, images)


class DecoderKernels(_Kernels):
    """The attention in the sigmoid form (training, validation loss, sampling) or the product
    form (decoding), and the table cell (decoding)."""

    def __init__(self) -> None:
        super().__init__()
        self.table_cell = TableCell()

    def prepare(self, decoder, state):
        """``state`` with what the kernels need once per image: for decoding without gradients
        e^(−2p), otherwise p in fp32 (the sigmoid form works in fp32)."""
        if state.projected is None:
            return state
        return self._run("attention", _prepared, state, declined=state)

    def attend(self, attention, state):
        form = cpu_attention.product_form if state.prepared is not None else cpu_attention.sigmoid_form
        return self._run("attention", form, attention, state)

    def cell(self, decoder, words, rest, state):
        if not state.decoding or torch.is_grad_enabled():
            return None
        return self._run("decoding cell", self.table_cell, decoder, words, rest, state.h, state.c)


def _prepared(state):
    if state.decoding and not torch.is_grad_enabled():
        return replace(state, prepared=cpu_attention.decoding_factors(state.projected))
    return replace(state, projected=state.projected.float())
