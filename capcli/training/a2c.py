"""``capcli a2c``: Advantage Actor-Critic fine-tuning of a trained captioner (and self-critical
sequence training with ``--baseline greedy``).

Actor: the captioner, sampling captions word by word from softmax(logits / temperature). The
reward of a caption (BLEU-4 or CIDEr-D against the image's references, special tokens removed)
arrives at its last word; the return at word t is γ^(T-1-t) · reward. Critic: an MLP on the
decoder's hidden state predicting that return. Advantage: return − value (``critic``) or
reward(sample) − reward(greedy caption) (``greedy``). Loss: −advantage · log-probability, plus
the critic's squared error × ``value_loss_weight``, minus ``entropy_weight`` × entropy, each a
mean over real (non-padding) words only.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from capcli.config import SHAPES_A2C_DEFAULTS, A2CConfig, is_shapes
from capcli.data.datasets import ImageCaptions, Images
from capcli.data.hdf5 import PreparedData, find_prepared, split_references
from capcli.data.vocab import END, START, Detokenizer
from capcli.errors import CapcliError, CheckpointError
from capcli.evaluation.scores import cider_d, corpus_bleu, ngrams
from capcli.model import cpu as cpu_kernels
from capcli.model.decoding import banned_words, greedy
from capcli.paths import a2c_files, tensorboard_folder
from capcli.runs.config import preflight_checks
from capcli.runs.log import a2c_epoch_line, nothing_to_train, resume_command
from capcli.runs.throughput import StepMeter
from capcli.runtime.device import resolve_device, resolve_precision
from capcli.runtime.progress import SILENT, Progress
from capcli.store.checkpoint import A2CState, Checkpoint, DataRef
from capcli.store.epochs import record
from capcli.store.files import model_from_checkpoint, read_checkpoint
from capcli.training.features import encode_images
from capcli.training.lifecycle import (
    A2C,
    Lifecycle,
    RunResult,
    open_run,
    stop_on_signals,
)
from capcli.training.samples import image_names, validation_samples
from capcli.training.steps import epoch_seed, optimizer_step


class Critic(nn.Module):
    """Predicts the return from a decoder hidden state."""

    def __init__(self, decoder_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(decoder_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)


# --- the pieces, as plain functions (unit-tested on hand-made tensors) -------------------------


def discounted_returns(rewards: torch.Tensor, lengths: torch.Tensor, steps: int, gamma: float) -> torch.Tensor:
    """Returns (batch, steps): the final reward of each caption discounted back from its last
    word (index lengths − 1); 0 on padding."""
    t = torch.arange(steps, device=rewards.device).unsqueeze(0)
    to_go = (lengths.unsqueeze(1) - 1 - t).clamp(min=0).float()
    mask = step_mask(lengths, steps)
    return rewards.unsqueeze(1) * gamma ** to_go * mask


def step_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, steps) 1.0 on real words (up to and including ``<end>``), 0.0 on padding."""
    return (torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)).float()


def clip_rewards(rewards: torch.Tensor, clip: float) -> torch.Tensor:
    return rewards.clamp(-clip, clip) if clip > 0 else rewards


def entropy_weight_at(epoch: int, epochs: int, initial: float, annealing: bool) -> float:
    """Linear annealing from ``initial`` (first epoch) to a tenth of it (last epoch)."""
    if not annealing or epochs <= 1:
        return initial
    return initial * (1.0 - 0.9 * epoch / (epochs - 1))


def a2c_losses(logp: torch.Tensor, entropy: torch.Tensor, values: torch.Tensor, returns: torch.Tensor,
               advantages: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(actor loss, critic loss, mean entropy), each averaged over real words only."""
    n = mask.sum().clamp(min=1)
    actor = -(advantages.detach() * logp * mask).sum() / n
    critic = (((values - returns) ** 2) * mask).sum() / n
    mean_entropy = (entropy * mask).sum() / n
    return actor, critic, mean_entropy


class Rewarder:
    """Sentence rewards: BLEU-4 (smoothed, per caption) or CIDEr-D with document frequencies
    from the training references."""

    def __init__(self, kind: str, train_references: list[list[list[str]]]) -> None:
        self.kind = kind
        self.df: Counter = Counter()
        if kind == "cider":
            for refs in train_references:
                self.df.update(set().union(*(ngrams(r, 4) for r in refs)))
            self.log_images = math.log(float(max(len(train_references), 1)))

    def __call__(self, references: list[list[list[str]]], hypotheses: list[list[str]]) -> list[float]:
        if self.kind == "bleu4":
            from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

            smooth = SmoothingFunction().method1
            return [float(sentence_bleu(r, h, smoothing_function=smooth)) if h else 0.0
                    for r, h in zip(references, hypotheses)]
        return cider_d(references, hypotheses, document_frequency=self.df, log_images=self.log_images)[1]


# --- the run ---------------------------------------------------------------------------------


class A2CTrainer:
    """One A2C run: actor, critic, their optimisers, its step and its epoch (the rest is its :class:`Lifecycle`)."""

    def __init__(self, config: A2CConfig, progress: Progress, explicit: frozenset, hold: contextlib.ExitStack) -> None:
        """``explicit``: names of options the user gave; on ``--resume`` every other option comes
        from the run's checkpoint, so a resumed run keeps its reward, baseline and rates.
        ``hold``: the run's lock is taken on it as soon as the run's name is known, before the
        run's own checkpoint is read (:func:`~capcli.training.lifecycle.open_run`)."""
        self.progress = progress
        preflight_checks(config.run_name, config.tensorboard)  # before anything is read or written
        config, ckpt = self._open(config, explicit, hold)
        self.config = config
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.model_config = ckpt.model_config
        self.encoder, self.decoder = model_from_checkpoint(ckpt)
        self.word_map = ckpt.word_map
        if self.prepared.word_map() != self.word_map:
            raise CheckpointError(f"the checkpoint's vocabulary differs from {self.prepared.name}'s; fine-tune on the "
                                  "data the model was trained on")
        depth = ckpt.train_config.fine_tune_depth if ckpt.train_config else None  # the stages its training tuned
        self.encoder.set_fine_tune(not config.freeze_encoder, depth)
        self.critic = Critic(self.model_config.decoder_dim)
        for m in (self.encoder, self.decoder, self.critic):
            m.to(self.device)
        cpu_kernels.enable(self.device, self.encoder, self.decoder)
        self.image_size, self.source_train_config = ckpt.image_size, ckpt.train_config
        self._build_optimizers(ckpt if config.resume else None)
        self.run = Lifecycle(A2C, self.files, self.state, self._snapshot,
                             names={"run": self.name, "data": self.prepared.name},
                             tensorboard=tensorboard_folder(config.output_folder, self.name, "a2c")
                             if config.tensorboard else None)
        if self.state.epoch >= config.epochs:
            return  # nothing to train: fit says so, and nothing (not even the feed) is touched
        self.feed = self.run.feed
        # a2c lines share the training run's feed
        self.run.begin(config.resume, self.prepared.folder, {"a2c_config": config, "model_config": self.model_config})
        self._build_data()

    def _open(self, config: A2CConfig, explicit: frozenset, hold: contextlib.ExitStack) -> tuple[A2CConfig, Checkpoint]:
        """Sets the run's data, name and files and opens the run (its lock on ``hold``); returns the
        run's options and the checkpoint it starts from: on ``--resume`` the run's own (read under
        the lock), its saved options overridden by the ones given; else ``--checkpoint``."""
        if config.resume:
            # the run: --run-name, else the data's name (found the way a new run would)
            self.name = config.run_name or find_prepared(config.data_folder or "data_output", config.data_name).name
            self.files = a2c_files(config.output_folder, self.name)
            ckpt = open_run(A2C, self.files, self.progress, hold, resume=True, overwrite=config.overwrite,
                            read=read_checkpoint)
            given = {k: getattr(config, k) for k in explicit | {"resume", "epochs"}}
            config = replace(ckpt.a2c_config or A2CConfig(), **given)
            self.prepared = self._prepared(config, ckpt)
        else:
            if not config.checkpoint:
                raise CapcliError("give --checkpoint (a trained model, e.g. model_outputs/BEST_shapes_5_5.pth.tar) "
                                  "or --resume")
            ckpt = read_checkpoint(config.checkpoint)  # the trained model: another run's file
            if is_shapes(ckpt.data.name or ""):  # a new run on a shapes model: its own defaults for what was not given
                config = replace(config, **{k: v for k, v in SHAPES_A2C_DEFAULTS.items() if k not in explicit})
            self.prepared = self._prepared(config, ckpt)
            # the run: --run-name, else the one that trained the model (its data's name before --run-name)
            self.name = config.run_name or ckpt.run or self.prepared.name
            self.files = a2c_files(config.output_folder, self.name)
            open_run(A2C, self.files, self.progress, hold, resume=False, overwrite=config.overwrite,
                     read=read_checkpoint)
        return replace(config, run_name=self.name), ckpt

    @staticmethod
    def _prepared(config: A2CConfig, ckpt: Checkpoint) -> PreparedData:
        folder = config.data_folder or ckpt.data.folder or "data_output"
        return find_prepared(folder, config.data_name or ckpt.data.name)

    def _build_optimizers(self, resumed: Checkpoint | None) -> None:
        """Actor (decoder, and the encoder with --train-encoder) and critic optimisers, the scaler
        and the run state; from ``resumed``, the run's own checkpoint, when continuing."""
        actor_params = [p for p in self.decoder.parameters() if p.requires_grad]
        groups = [{"params": actor_params, "lr": self.config.actor_lr}]
        enc_params = [p for p in self.encoder.parameters() if p.requires_grad]
        if enc_params:
            groups.append({"params": enc_params, "lr": self.config.encoder_lr})
        self.actor_opt = torch.optim.Adam(groups)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)
        self.state = A2CState()
        if resumed is not None:
            resumed.check_resumable("a2c")
            self.critic.load_state_dict(resumed.critic)
            self.actor_opt.load_state_dict(resumed.actor_optimizer)
            self.critic_opt.load_state_dict(resumed.critic_optimizer)
            if resumed.scaler:
                self.scaler.load_state_dict(resumed.scaler)
            self.state = resumed.state

    def _build_data(self) -> None:
        words = Detokenizer(self.word_map)
        train_rows, train_lens = self.prepared.captions("TRAIN")
        self.cpi, _ = self.prepared.images_meta("TRAIN")
        self.prepared.images_meta("VAL")  # present and whole before the first epoch, not after it
        self.train = ImageCaptions(self.prepared.path("IMAGES", "TRAIN"), "images", train_rows, train_lens, self.cpi)
        self.train_refs = [[words(r) for r in train_rows[i * self.cpi:(i + 1) * self.cpi]]
                           for i in range(len(self.train))]
        self.rewarder = Rewarder(self.config.reward, self.train_refs)
        self.val = Images(self.prepared.path("IMAGES", "VAL"), "images", self.config.max_val_images)
        self.val_refs = split_references(self.prepared, "VAL", len(self.val)).captions  # raw ones when prep wrote them
        self.sample_names = image_names(self.prepared, "VAL", min(len(self.val), 3))
        self.samples: list[dict] = []  # of the latest validation (see validate)
        self.max_len = self.config.max_len or (len(train_rows[0]) - 2 if train_rows else 50)
        self.words = words

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.encoder, images, self.device, self.precision, train=not self.config.freeze_encoder)

    def rollout(self, features: torch.Tensor):
        """Sample one caption per image with gradients: tokens, lengths, log-probs, entropies, hidden states."""
        batch = features.shape[0]
        start, end = self.word_map[START], self.word_map[END]
        ban = torch.zeros(len(self.word_map), dtype=torch.bool, device=self.device)
        ban[list(banned_words(self.word_map))] = True  # never sampled
        state = self.decoder.init_state(features)
        words = torch.full((batch,), start, dtype=torch.long, device=self.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        tokens, logps, entropies, hiddens = [], [], [], []
        for _ in range(self.max_len):
            logits, _, state = self.decoder.step(words, state)
            logits = (logits.float() / self.config.temperature).masked_fill(ban, -math.inf)
            dist = torch.distributions.Categorical(logits=logits)
            words = dist.sample()
            words = torch.where(finished, torch.full_like(words, end), words)
            tokens.append(words)
            logps.append(dist.log_prob(words))
            entropies.append(dist.entropy())
            hiddens.append(state.h)
            finished = finished | (words == end)
            if bool(finished.all()):
                break
        tokens_t = torch.stack(tokens, 1)
        is_end = tokens_t == end
        lengths = torch.where(is_end.any(1), is_end.int().argmax(1) + 1,
                              torch.full((batch,), tokens_t.shape[1], device=self.device))
        return tokens_t, lengths, torch.stack(logps, 1), torch.stack(entropies, 1), torch.stack(hiddens, 1)

    def step(self, images: torch.Tensor, indices: list[int], entropy_weight: float) -> dict:
        self.decoder.train()
        self.decoder.dropout.p = 0.0  # sampling is the exploration; no dropout noise in the policy
        self.encoder.train(not self.config.freeze_encoder)
        with self.precision.autocast():
            features = self._features(images)
            tokens, lengths, logp, entropy, hidden = self.rollout(features)
        references = [self.train_refs[i] for i in indices]
        hyps = [self.words(row) for row in tokens.tolist()]  # up to <end>, without <start>/<pad>
        rewards = clip_rewards(torch.tensor(self.rewarder(references, hyps), device=self.device),
                               self.config.reward_clip)
        steps = tokens.shape[1]
        mask = step_mask(lengths, steps)
        returns = discounted_returns(rewards, lengths, steps, self.config.gamma)
        values = self.critic(hidden.detach().float())
        if self.config.baseline == "greedy":
            self.decoder.eval()
            with torch.no_grad(), self.precision.autocast():
                base = greedy(self.decoder, features.detach(), self.word_map[START], self.word_map[END],
                              self.max_len, banned_words(self.word_map), attention=False)
            greedy_rewards = clip_rewards(torch.tensor(self.rewarder(references, [self.words(d.tokens) for d in base]),
                                                       device=self.device), self.config.reward_clip)
            advantages = (rewards - greedy_rewards).unsqueeze(1).expand(-1, steps) * mask
        else:
            advantages = (returns - values.detach()) * mask
        actor, critic, mean_entropy = a2c_losses(logp, entropy, values, returns, advantages, mask)
        loss = actor + self.config.value_loss_weight * critic - entropy_weight * mean_entropy
        params = [p for g in self.actor_opt.param_groups for p in g["params"]] + list(self.critic.parameters())
        optimizer_step(loss, (self.actor_opt, self.critic_opt), self.scaler,
                       lambda: torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip),
                       lambda value: f"the A2C loss became {value} at step {self.state.step + 1}; stopped without "
                                     f"saving ({self.files.checkpoint} is untouched); try a lower --actor-lr")
        self.state.step += 1
        self.state.epoch_step += 1
        n = mask.sum().clamp(min=1)
        return {"reward": float(rewards.mean()), "advantage": float((advantages * mask).sum() / n),
                "entropy": float(mean_entropy.detach()), "actor_loss": float(actor.detach()),
                "critic_loss": float(critic.detach())}

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Validation BLEU-4 and CIDEr-D of greedy captions."""
        self.decoder.eval()
        self.encoder.eval()
        hyps = []
        for x, _ in DataLoader(self.val, batch_size=32):
            with self.precision.autocast():
                decoded = greedy(self.decoder, self._features(x), self.word_map[START], self.word_map[END],
                                 self.max_len, banned_words(self.word_map), attention=False)
            hyps.extend(self.words(d.tokens) for d in decoded)
        self.samples = validation_samples(self.sample_names, hyps, self.val_refs)  # for the feed
        return corpus_bleu(self.val_refs, hyps, 4), cider_d(self.val_refs, hyps)[0]

    def _snapshot(self) -> Checkpoint:
        return Checkpoint(
            "a2c", self.model_config, self.word_map, self.encoder.state_dict(), self.decoder.state_dict(), self.state,
            self.image_size, self.max_len, DataRef(self.prepared.folder, self.prepared.name), run=self.name,
            train_config=self.source_train_config, a2c_config=self.config, critic=self.critic.state_dict(),
            actor_optimizer=self.actor_opt.state_dict(), critic_optimizer=self.critic_opt.state_dict(),
            scaler=self.scaler.state_dict(), saved_at=time.time())

    def fit(self) -> RunResult:
        start, first_epoch = time.monotonic(), self.state.epoch
        reason = nothing_to_train(first_epoch, self.config.epochs)
        if first_epoch < self.config.epochs:
            reason = self.run.run(self.config.epochs, self._epoch)
        return RunResult("a2c", self.name, epochs_done=self.state.epoch, best_epoch=self.state.best_epoch,
                         best_score=self.state.best_score, monitor=self.config.reward, best_bleu4=None,
                         checkpoint=self.files.checkpoint, best_checkpoint=self.files.best, stop_reason=reason,
                         seconds=time.monotonic() - start, epochs_trained=self.state.epoch - first_epoch)

    def _epoch(self, epoch: int) -> None:
        """One pass over the training images (the rest of it when resuming mid-epoch), then validation."""
        weight = entropy_weight_at(epoch, self.config.epochs, self.config.entropy_weight,
                                   self.config.entropy_annealing)
        generator = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch))
        order = torch.randperm(len(self.train), generator=generator).tolist()
        batches = [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
        done = self.state.epoch_step  # batches of this epoch done before an interruption
        task = self.progress.task(f"a2c epoch {epoch + 1}/{self.config.epochs}", len(batches) - done, "batch")
        totals: Counter = Counter()
        started, meter, log_every = time.monotonic(), StepMeter(self.device), max(1, len(batches) // 20)
        for steps, indices in enumerate(meter.timed(batches[done:]), 1):
            images = torch.stack([self.train[i][0] for i in indices])
            figures = self.step(images, indices, weight)
            meter.count(len(indices), len(indices))  # one sampled caption per image
            totals.update(figures)
            if self.state.epoch_step % log_every == 0:
                self.feed.write("step", split="train", epoch=epoch + 1, step=self.state.step,
                                lr=self.actor_opt.param_groups[0]["lr"], **figures, **meter.figures())
            task.show(f"reward {totals['reward'] / steps:.3f} entropy {totals['entropy'] / steps:.2f}")
            task.advance()
            self.run.after_step(task)  # a signal saves and stops here
        task.close()
        means = {k: v / max(len(batches) - done, 1) for k, v in totals.items()}
        self._end_of_epoch(epoch, means, weight, started)

    def _end_of_epoch(self, epoch: int, means: dict, weight: float, started: float) -> None:
        """Validate, record the epoch in the state and the feed, save (``BEST_`` when the score improved)."""
        bleu4, cider = self.validate()
        score = cider if self.config.reward == "cider" else bleu4
        improved = score > self.state.best_score
        if improved:
            self.state.best_score, self.state.best_epoch = score, epoch + 1
        self.state.epoch, self.state.epoch_step = epoch + 1, 0
        self.state.epochs.append(record(epoch + 1, bleu4, cider, **means, entropy_weight=weight))
        lr = self.actor_opt.param_groups[0]["lr"]
        self.feed.write("epoch", split="train", epoch=epoch + 1, step=self.state.step, lr=lr,
                        entropy_weight=weight, **means)
        self.feed.write("epoch", split="val", epoch=epoch + 1, step=self.state.step, lr=lr, bleu4=bleu4,
                        cider_d=cider, improved=improved, samples=self.samples)
        self.run.save(best=improved)
        score_name = "CIDEr-D" if self.config.reward == "cider" else "BLEU-4"
        self.progress.message(a2c_epoch_line(epoch + 1, self.config.epochs, means,
                                             {"CIDEr-D": cider, "BLEU-4": bleu4}, score_name, lr,
                                             time.monotonic() - started, improved))


def run_a2c(config: A2CConfig, progress: Progress = SILENT, explicit: frozenset = frozenset(),
            resume_args: Sequence[str] = ()) -> RunResult:
    """Fine-tune as ``config`` says, holding the run's lock throughout.

    Args:
        resume_args: the options as given, for the resume command an interrupted run prints.
    """
    with stop_on_signals(), contextlib.ExitStack() as hold:  # the run's lock, from open_run until the end
        trainer = A2CTrainer(config, progress, explicit, hold)
        trainer.run.resume_hint = resume_command("a2c", resume_args, [("--data-folder", trainer.prepared.folder),
                                                                  ("--data-name", trainer.prepared.name),
                                                                  ("--run-name", trainer.name)])
        return trainer.fit()
