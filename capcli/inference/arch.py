"""``capcli arch``: a model's layers with output shapes for a sample input, and parameter counts
(total / trainable / frozen) per component — ImgCap's parameter table."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from capcli.config import ModelConfig
from capcli.errors import CapcliError
from capcli.model.captioner import build_model, with_preprocess
from capcli.safeio import atomic_write
from capcli.store.files import model_from_checkpoint, read_checkpoint


@dataclass
class Layer:
    component: str
    name: str
    kind: str
    shape: tuple[int, ...] | None  # output shape for the sample (first call for per-word layers)
    params: int


@dataclass
class Counts:
    total: int
    trainable: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


@dataclass
class ArchReport:
    config: ModelConfig
    fine_tune: bool
    image_size: int
    caption_length: int
    layers: list[Layer]
    counts: dict[str, Counts]  # encoder, attention, decoder, total
    source: str


@dataclass
class Subject:
    """The model ``capcli arch`` describes, and where it came from (a checkpoint's path or "options")."""

    encoder: nn.Module
    decoder: nn.Module
    config: ModelConfig
    fine_tune: bool
    image_size: int
    source: str


def subject_of(checkpoint: str | None, options: dict) -> Subject:
    """The model in ``checkpoint`` (a checkpoint or bundle), else one built from ``options``."""
    if checkpoint:
        ckpt = read_checkpoint(checkpoint)
        encoder, decoder = model_from_checkpoint(ckpt)
        fine_tune = bool(ckpt.train_config and ckpt.train_config.fine_tune_encoder)
        if ckpt.stage == "a2c":
            fine_tune = bool(ckpt.a2c_config and not ckpt.a2c_config.freeze_encoder)
        return Subject(encoder, decoder, ckpt.model_config, fine_tune, ckpt.image_size, checkpoint)
    fine_tune = options.pop("fine_tune_encoder")
    image_size = options.pop("image_size")
    config = with_preprocess(ModelConfig(**options))
    encoder, decoder = build_model(config)
    return Subject(encoder, decoder, config, fine_tune, image_size, "options")


def _component(name: str) -> str:
    return "attention" if name.startswith("attention") else "decoder"


def count(module: nn.Module) -> Counts:
    params = list(module.parameters())
    return Counts(sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))


def describe(subject: Subject, caption_length: int = 12) -> ArchReport:
    """Run a sample image and caption through the model, recording each layer's output shape."""
    encoder, decoder, config, image_size = subject.encoder, subject.decoder, subject.config, subject.image_size
    encoder.set_fine_tune(subject.fine_tune)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    named: list[tuple[str, str, nn.Module]] = [("encoder", n, m) for n, m in encoder.stages()]
    for n, m in decoder.named_modules():
        if n and not list(m.children()) and not isinstance(m, nn.Dropout):
            named.append((_component(n), n, m))

    def hook(key: str):
        def record(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            shapes.setdefault(key, tuple(out.shape))
        return record

    for component, n, m in named:
        hooks.append(m.register_forward_hook(hook(f"{component}:{n}")))
    encoder.eval()
    decoder.eval()
    try:
        with torch.no_grad():
            features = encoder(torch.rand(1, 3, image_size, image_size))
            caption = torch.randint(4, config.vocab_size, (1, caption_length + 2)) if config.vocab_size > 4 else \
                torch.zeros(1, caption_length + 2, dtype=torch.long)
            state = decoder.init_state(features)
            for t in range(caption_length + 1):  # word by word: shapes per word
                _, _, state = decoder.step(caption[:, t], state)
    finally:
        for h in hooks:
            h.remove()
    layers = [Layer(component, n, type(m).__name__, shapes.get(f"{component}:{n}"),
                    sum(p.numel() for p in m.parameters())) for component, n, m in named]
    attention = getattr(decoder, "attention", None)
    attention_counts = count(attention) if attention is not None else Counts(0, 0)
    decoder_counts = count(decoder)
    counts = {"encoder": count(encoder), "attention": attention_counts,
              "decoder": Counts(decoder_counts.total - attention_counts.total,
                                decoder_counts.trainable - attention_counts.trainable)}
    counts["total"] = Counts(sum(c.total for c in counts.values()), sum(c.trainable for c in counts.values()))
    return ArchReport(config, subject.fine_tune, image_size, caption_length, layers, counts, subject.source)


def report_text(report: ArchReport) -> str:
    c = report.config
    lines = [f"Model ({report.source}): {c.encoder} encoder ({'last stages trained' if report.fine_tune else 'frozen'})"
             f" + {c.decoder} decoder, vocabulary {c.vocab_size}, embed {c.embed_dim}"
             f"{' (one-hot)' if c.one_hot else ''}, attention {c.attention_dim}, LSTM {c.decoder_dim}",
             f"Sample: 1 image {report.image_size}×{report.image_size}, 1 caption of {report.caption_length} words "
             "(decoder shapes are per word)"]
    if c.preprocess is not None:
        p = c.preprocess
        lines.append(f"Encoder input: resized to {p.resize} ({p.interpolation}), centre {p.size}×{p.size}, "
                     f"mean {', '.join(f'{m:.3f}' for m in p.mean)}, std {', '.join(f'{v:.3f}' for v in p.std)}")
    lines.append("")
    header = f"{'component':<10} {'layer':<26} {'type':<18} {'output shape':<22} {'params':>12}"
    lines += [header, "-" * len(header)]
    for layer in report.layers:
        shape = "×".join(map(str, layer.shape)) if layer.shape else "(not called)"
        lines.append(f"{layer.component:<10} {layer.name:<26} {layer.kind:<18} {shape:<22} {layer.params:>12,}")
    lines += ["", f"{'parameters':<10} {'total':>14} {'trainable':>14} {'frozen':>14}"]
    for name, counts in report.counts.items():
        lines.append(f"{name:<10} {counts.total:>14,} {counts.trainable:>14,} {counts.frozen:>14,}")
    return "\n".join(lines)


def render_graph(subject: Subject, report: ArchReport, path: str) -> str:
    """A diagram of the forward pass (torchviz + Graphviz), written to ``path`` (PNG)."""
    try:
        import graphviz  # noqa: F401
        from torchviz import make_dot
    except ImportError:
        raise CapcliError("--graph needs torchviz and Graphviz: pip install 'capcli[graph]' and install "
                          "Graphviz (e.g. apt install graphviz)") from None
    encoder, decoder = subject.encoder, subject.decoder
    features = encoder(torch.rand(1, 3, report.image_size, report.image_size))
    caption = torch.randint(0, report.config.vocab_size, (1, report.caption_length + 2))
    logits, _ = decoder(features, caption, torch.tensor([report.caption_length + 2]))
    params = {f"encoder.{n}": p for n, p in encoder.named_parameters()}
    params.update({f"decoder.{n}": p for n, p in decoder.named_parameters()})
    dot = make_dot(logits, params=params)
    try:
        png = dot.pipe(format="png")  # rendered in memory: written below like every other file
    except Exception as exc:  # graphviz's `dot` program missing or failing
        raise CapcliError(f"--graph: Graphviz could not render ({str(exc).splitlines()[0][:120]}); install "
                          "Graphviz (e.g. apt install graphviz)") from None
    with atomic_write(path) as f:
        f.write(png)
    return path
