"""``capcli train``: supervised training of the captioner, with resume and a live metrics feed.

Each epoch trains on every caption row, then measures validation loss / top-5 (teacher forced)
and validation BLEU-4 and CIDEr-D from real batched greedy decoding (against every raw reference
when prep wrote them), appends JSON lines to the metrics feed, writes the seed's JSON summaries
and a checkpoint (``BEST_`` too when the ``--monitor`` score improves; it also drives the
learning-rate decay and early stopping).
With a frozen encoder the CNN features are cached on disk and the CNN never runs again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from capcli.config import ModelConfig, TrainConfig
from capcli.data.datasets import ImageCaptions, Images, pick_captions
from capcli.data.hdf5 import PreparedData, find_prepared, split_references
from capcli.data.jsonfiles import write_json
from capcli.data.vocab import END, START, Detokenizer
from capcli.errors import CapcliError, CheckpointError, DataError
from capcli.evaluation.content import complete_rows, split_drawn
from capcli.evaluation.content import score as content_score
from capcli.evaluation.scores import bleu, cider_d
from capcli.model import cpu as cpu_kernels
from capcli.model.captioner import build_model
from capcli.model.decoding import banned_words, greedy
from capcli.model.loss import caption_loss
from capcli.model.pretrained import load_pretrained
from capcli.paths import RunFiles, tensorboard_folder, train_files
from capcli.runs.log import resume_command, running_figures, train_epoch_line
from capcli.runs.throughput import StepMeter
from capcli.runtime.device import resolve_device, resolve_precision
from capcli.runtime.distributed import (
    DistInfo,
    collective_errors,
    gather_lists,
    init_distributed,
    my_batches,
    padded_share,
    shutdown,
    sum_over_ranks,
    unwrap,
)
from capcli.runtime.progress import SILENT, Progress
from capcli.store.checkpoint import Checkpoint, DataRef, TrainState
from capcli.store.epochs import figure_lists
from capcli.store.sidecar import best_figures
from capcli.training.concepts import pretrain_encoder
from capcli.training.features import cache_key, encode_images, encoder_fingerprint, ensure_features
from capcli.training.lifecycle import TRAIN, Lifecycle, RunResult, open_run
from capcli.training.samples import image_names, validation_samples
from capcli.training.selection import no_gain, record_epoch
from capcli.training.setup import (
    dataset_defaults,
    kept_on_resume,
    model_config_for,
    nothing_to_train_result,
    preflight,
    resumable,
    run_named,
    warn_random_encoder,
)
from capcli.training.steps import epoch_seed, optimizer_step


def run_train(config: TrainConfig, model_options: dict | None = None, given: frozenset = frozenset(),
              progress: Progress = SILENT, resume_args: Sequence[str] = ()) -> RunResult:
    """Train (or resume) as ``config`` says; under torchrun on every rank, rank 0 alone printing and writing.

    Args:
        model_options: architecture fields for a new run (see :class:`ModelConfig`).
        given: the names of the options the user gave: they win over the data set's defaults, and
            architecture ones are checked against a resumed checkpoint.
        resume_args: the options as given, for the resume command an interrupted run prints.

    Raises:
        RankLost: under torchrun, another rank died or did not answer within the timeout.
    """
    device = resolve_device(config.device)
    dist_info = init_distributed(device)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    if not dist_info.is_main:
        progress = SILENT
    try:
        with collective_errors(dist_info):
            result = _train(config, model_options or {}, given, progress, resume_args, device, dist_info)
        result.main_rank = dist_info.is_main
        return result
    finally:
        shutdown(dist_info)


def _train(config: TrainConfig, model_options: dict, given: frozenset, progress: Progress,
           resume_args: Sequence[str], device: torch.device, dist_info: DistInfo) -> RunResult:
    """The run on this rank, inside the collective-error boundary of :func:`run_train`."""
    prepared = find_prepared(config.data_folder, preflight(config))
    for split in ("TRAIN", "VAL"):  # present and whole, before anything reads or writes
        prepared.images_meta(split)
    config, model_options = dataset_defaults(prepared, run_named(config, prepared), model_options, given)
    files = train_files(config.output_folder, config.run_name)
    if config.epochs == 0:  # nothing can be trained: no lock, no folder, nothing written
        return nothing_to_train_result(config.run_name, files, None, config)
    with contextlib.ExitStack() as hold:
        ckpt = open_run(TRAIN, files, progress, hold, resume=config.resume, overwrite=config.overwrite,
                        read=resumable, continue_from=config.checkpoint, writer=dist_info.is_main)
        config = kept_on_resume(config, ckpt, given)
        if config.epochs <= (ckpt.state.epoch if ckpt is not None else 0):
            return nothing_to_train_result(config.run_name, files, ckpt, config)
        word_map = prepared.word_map()
        model_config = model_config_for(ckpt, model_options, given, len(word_map))
        warn_random_encoder(config, prepared.name, ckpt, progress)
        trainer = Trainer(config, model_config, prepared, word_map, files, device, dist_info, progress, ckpt)
        trainer.run.resume_hint = resume_command("train", resume_args, [("--data-name", prepared.name)])
        return trainer.fit()


class Trainer:
    """One training run: model, optimisers, data, its step and its epoch (the rest is its :class:`Lifecycle`)."""

    def __init__(self, config: TrainConfig, model_config: ModelConfig, prepared: PreparedData, word_map: dict,
                 files: RunFiles, device: torch.device, dist_info: DistInfo, progress: Progress,
                 ckpt: Checkpoint | None):
        self.config, self.model_config, self.prepared, self.word_map = config, model_config, prepared, word_map
        self.files, self.device, self.dist, self.progress = files, device, dist_info, progress
        self.precision = resolve_precision(config.precision, device)
        torch.manual_seed(config.seed)
        self.encoder, self.decoder = build_model(model_config)
        if ckpt is None and config.pretrained:
            load_pretrained(self.encoder, config.pretrained_weights, progress=dist_info.is_main)
        if ckpt is not None:
            self.encoder.load_state_dict(ckpt.encoder)
            self.decoder.load_state_dict(ckpt.decoder)
        self.encoder.set_fine_tune(config.fine_tune_encoder, config.fine_tune_depth)
        self.encoder.to(device)
        self.decoder.to(device)
        cpu_kernels.enable(device, self.encoder, self.decoder, compiled=config.compile)
        if ckpt is None and not config.pretrained:
            self._calibrate_encoder()
        if ckpt is None and config.concept_epochs and config.fine_tune_encoder:  # before DDP shares rank 0's weights
            pretrain_encoder(self.encoder, prepared, config, device, self.precision, progress)
        self._build_optimizers(ckpt)
        self.state: TrainState = ckpt.state if ckpt is not None else TrainState()
        self.run = Lifecycle(TRAIN, files, self.state, self._snapshot, dist_info, config.save_every,
                             names={"run": config.run_name, "data": prepared.name},
                             tensorboard=tensorboard_folder(config.output_folder, config.run_name)
                             if config.tensorboard else None)
        self.feed = self.run.feed
        self.run.begin(ckpt is not None, prepared.folder, {"train_config": config, "model_config": model_config})
        self._build_data()

    def _calibrate_encoder(self, images: int = 64, batch_size: int = 32) -> None:
        """A random encoder gets BatchNorm statistics from the first training images (see
        :meth:`Encoder.calibrate_batchnorm`); the same on every rank and every run."""
        loader = DataLoader(Images(self.prepared.path("IMAGES", "TRAIN"), "images", images), batch_size=batch_size)
        with self.precision.autocast():
            self.encoder.calibrate_batchnorm(x.to(self.device).float().div_(255.0) for x, _ in loader)

    def _build_optimizers(self, ckpt: Checkpoint | None) -> None:
        dec_params = [p for p in self.decoder.parameters() if p.requires_grad]
        self.decoder_opt = torch.optim.Adam(dec_params, lr=self.config.decoder_lr)
        enc_params = [p for p in self.encoder.parameters() if p.requires_grad]
        self.encoder_opt = torch.optim.Adam(enc_params, lr=self.config.encoder_lr) if enc_params else None
        self.optimizers = [o for o in (self.decoder_opt, self.encoder_opt) if o is not None]
        self.trained_params = dec_params + enc_params
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)
        if ckpt is not None:
            self.decoder_opt.load_state_dict(ckpt.decoder_optimizer)
            if self.encoder_opt is not None and ckpt.encoder_optimizer:
                try:
                    self.encoder_opt.load_state_dict(ckpt.encoder_optimizer)
                except ValueError:  # its parameter groups hold another number of weights
                    raise CheckpointError(f"{ckpt.path}: the run tuned another part of the encoder; resume with "
                                          "its own --fine-tune-depth, or start a new run") from None
            if ckpt.scaler:
                self.scaler.load_state_dict(ckpt.scaler)
        self.train_decoder = self.decoder
        self.train_encoder = self.encoder
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_decoder = DistributedDataParallel(self.decoder, device_ids=ids)
            if self.encoder_opt is not None:
                self.train_encoder = DistributedDataParallel(self.encoder, device_ids=ids)
        if self.config.compile:
            # Compile the one-word recurrence, not the caption loop: the loop's length and shrinking batch
            # change with every batch and would recompile the whole graph each time.
            self.decoder.advance = torch.compile(self.decoder.advance, dynamic=True)

    @property
    def cached(self) -> bool:
        return self.config.feature_cache and self.encoder_opt is None

    def _source(self, split: str, fingerprint: str | None) -> tuple[str, str]:
        """(HDF5 path, dataset key) the split's inputs come from: cached features or images."""
        if fingerprint is None:
            return self.prepared.path("IMAGES", split), "images"
        key = cache_key(fingerprint, self.prepared.images_meta(split)[1])
        # every rank encodes a share; rank 0 writes the file the others read once it is finished
        return ensure_features(self.encoder, self.prepared, split, key, self.device, self.precision, self.progress,
                               self.dist), "features"

    def _build_data(self) -> None:
        fingerprint = encoder_fingerprint(self.encoder) if self.cached else None
        captions, caplens = self.prepared.captions("TRAIN")
        self.cpi, self.image_size = self.prepared.images_meta("TRAIN")
        if self.config.complete_captions:
            captions, caplens = complete_rows(self.prepared, captions, caplens, self.cpi)
        self.train_rows = ImageCaptions(*self._source("TRAIN", fingerprint), captions, caplens, self.cpi)
        self.images_per_batch = max(1, self.config.batch_size // self.cpi)
        if not len(self.train_rows):
            raise CapcliError(f"no training captions in {self.prepared.folder} for {self.prepared.name}")
        captions, caplens = self.prepared.captions("VAL")
        source = self._source("VAL", fingerprint)
        val_count = len(Images(*source, self.config.max_val_images))  # honours --max-val-images
        if not val_count or len(captions) < val_count * self.cpi:
            raise DataError(f"{self.prepared.name} in {self.prepared.folder} has no usable validation split "
                            f"({val_count} images, {len(captions)} captions); prepare it with validation "
                            "images (`capcli prep`)")
        limit = val_count * self.cpi
        self.val_rows = ImageCaptions(*source, captions[:limit], caplens[:limit], self.cpi)
        self.max_len = len(captions[0]) - 2 if captions else 50
        self.to_words = Detokenizer(self.word_map)
        self.val_refs = split_references(self.prepared, "VAL", val_count).captions
        self.sample_names = image_names(self.prepared, "VAL", min(val_count, 3))
        self.samples: list[dict] = []  # of the latest validation (see validate)
        self.val_drawn = split_drawn(self.prepared.folder, self.prepared.name,
                                     image_names(self.prepared, "VAL", val_count))
        self.content: float | None = None  # shapes only: the latest validation's content accuracy

    def _features(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        if self.cached:
            return x.to(self.device, non_blocking=True).float()
        if train and self.encoder_opt is not None:
            return encode_images(self.train_encoder, x, self.device, self.precision, train=True)
        return encode_images(self.encoder, x, self.device, self.precision)

    def loader(self, dataset, batches: Sequence[Sequence[int]]) -> DataLoader:
        return DataLoader(dataset, batch_sampler=batches, num_workers=self.config.workers, persistent_workers=False,
                          pin_memory=self.device.type == "cuda")

    def epoch_batches(self, epoch: int, skip_steps: int) -> list[list[int]]:
        """This rank's image batches for ``epoch``: the order is fixed by (seed, epoch), so resume redoes
        it exactly; under torchrun it is padded by repeating images so every rank has as many batches."""
        generator = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch))
        order = padded_share(torch.randperm(len(self.train_rows), generator=generator).tolist(), self.dist)
        size = self.images_per_batch
        return [order[i:i + size] for i in range(skip_steps * size, len(order), size)]

    @staticmethod
    def _image_of(features: torch.Tensor, cpi: int) -> torch.Tensor:
        """Caption → image map of a batch: the captions of image i are rows i·cpi to (i+1)·cpi − 1."""
        return torch.arange(features.shape[0], device=features.device).repeat_interleave(cpi)

    def train_step(self, x, captions, lengths) -> tuple[float, float]:
        """autocast(forward, loss) → scale → backward → unscale → clip → step → update → zero_grad.

        ``x``: a batch of images (or their features), ``captions`` (images, k, L) the captions to train on.
        """
        cpi = captions.shape[1]
        captions, lengths = captions.flatten(0, 1).to(self.device), lengths.flatten().to(self.device)
        optimizers = self.optimizers
        with self.precision.autocast():
            features = self._features(x, train=True)  # once per image, for all its captions
            logits, alphas = self.train_decoder(features, captions, lengths, self.config.teacher_forcing,
                                                self._image_of(features, cpi))
            loss, top5 = caption_loss(logits, alphas, captions, lengths, self.config.alpha_c)
        optimizer_step(loss, optimizers, self.scaler,
                       lambda: torch.nn.utils.clip_grad_value_(self.trained_params, self.config.grad_clip),
                       lambda value: f"the training loss became {value} at epoch {self.state.epoch + 1} step "
                                     f"{self.state.step + 1}; stopped without saving (the last good checkpoint is "
                                     f"untouched: {self.files.checkpoint}); try a lower learning rate or "
                                     "--precision fp32")
        return float(loss.item()), float(top5.item())

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """Train one epoch (from ``epoch_step`` when resuming mid-epoch); returns mean loss, top-5."""
        self.decoder.train()
        self.encoder.train(self.encoder_opt is not None)
        torch.manual_seed(epoch_seed(self.config.seed, epoch))
        skip = self.state.epoch_step
        loader = self.loader(self.train_rows, self.epoch_batches(epoch, skip))
        task = self.progress.task(f"epoch {epoch + 1}/{self.config.epochs}", len(loader), "batch")
        totals, log_every = [0.0, 0.0, 0], max(1, len(loader) // 20)
        meter = StepMeter(self.device)
        for x, captions, lengths in meter.timed(loader):
            # --captions-per-step k: k of each image's captions (0: all)
            captions, lengths = pick_captions(captions, lengths, self.config.captions_per_step or captions.shape[1])
            loss, top5 = self.train_step(x, captions, lengths)
            meter.count(captions.shape[0] * captions.shape[1], captions.shape[0])  # captions: (images, k, L)
            self.state.step += 1
            self.state.epoch_step += 1
            totals = [totals[0] + loss, totals[1] + top5, totals[2] + 1]
            task.show(running_figures(*totals))
            task.advance()
            if self.feed and self.state.epoch_step % log_every == 0:
                self.feed.write("step", split="train", epoch=epoch + 1, step=self.state.step, loss=loss,
                                top5=top5, lr=self.decoder_opt.param_groups[0]["lr"], **meter.figures())
            self.run.after_step(task)  # a signal saves and stops here; --save-every saves
        task.close()
        loss_sum, top5_sum, n = sum_over_ranks(totals, self.dist)  # the epoch's figures over every rank
        return loss_sum / max(n, 1), top5_sum / max(n, 1)

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float, float]:
        """Validation loss and top-5 (teacher forced), and BLEU-4 and CIDEr-D from batched greedy decoding.

        Under torchrun each rank takes every world-th batch and every rank gets all the results,
        joined in batch order: the same figures as one process, and the same decisions on every rank.
        """
        self.decoder.eval()
        self.encoder.eval()
        results = sorted(gather_lists(self._validate_batches(), self.dist), key=lambda result: result[0])
        loss_sum = top5_sum = 0.0
        hypotheses = []
        for _, loss, top5, words in results:  # summed in batch order, as one process sums them
            loss_sum, top5_sum = loss_sum + loss, top5_sum + top5
            hypotheses.extend(words)
        references = self.val_refs[:len(hypotheses)]
        self.samples = validation_samples(self.sample_names, hypotheses, references)  # for the feed
        if self.val_drawn is not None:
            self.content = content_score(hypotheses, self.val_drawn[:len(hypotheses)]).colour_shape
        bleu4, cider = bleu(references, hypotheses, 4)[3], cider_d(references, hypotheses)[0]
        batches = max(len(results), 1)
        return loss_sum / batches, top5_sum / batches, bleu4, cider

    def _validate_batches(self) -> list[tuple[int, float, float, list[list[str]]]]:
        """(batch number, loss, top-5, decoded words of each image) for this rank's validation batches."""
        start, end = self.word_map[START], self.word_map[END]
        banned = banned_words(self.word_map)  # as captioning and evaluation decode
        # --batch-size images a batch (not captions): no gradients here, and greedy decoding is
        # cheaper per image in large batches
        size, count = self.config.batch_size, len(self.val_rows)
        numbers = my_batches(-(-count // size), self.dist)
        batches = [range(k * size, min((k + 1) * size, count)) for k in numbers]
        results = []
        for k, (x, captions, lengths) in zip(numbers, self.loader(self.val_rows, batches)):
            captions, lengths = captions.flatten(0, 1).to(self.device), lengths.flatten().to(self.device)
            with self.precision.autocast():
                image_features = self._features(x, False)  # each image encoded once for loss and BLEU
                logits, alphas = self.decoder(image_features, captions, lengths, 1.0,
                                              self._image_of(image_features, self.cpi))
                loss, top5 = caption_loss(logits, alphas, captions, lengths, self.config.alpha_c)
                decoded = greedy(self.decoder, image_features, start, end, self.max_len, banned, attention=False)
            results.append((k, loss.item(), top5.item(), [self.to_words(d.tokens) for d in decoded]))
        return results

    def _snapshot(self) -> Checkpoint:
        """The run as of now, with the weights of the unwrapped (not DDP, not compiled) model."""
        return Checkpoint(
            "train", self.model_config, dict(self.word_map), unwrap(self.encoder).state_dict(),
            unwrap(self.decoder).state_dict(), self.state, self.image_size, self.max_len,
            DataRef(self.prepared.folder, self.prepared.name), run=self.config.run_name, train_config=self.config,
            decoder_optimizer=self.decoder_opt.state_dict(),
            encoder_optimizer=self.encoder_opt.state_dict() if self.encoder_opt else None,
            scaler=self.scaler.state_dict(), saved_at=time.time())

    def _write_summaries(self) -> None:
        write_json(self.files.bleu, [r.val_bleu4 for r in self.state.epochs])
        write_json(self.files.metrics, figure_lists(self.state.epochs))

    def _end_of_epoch(self, epoch: int, train: tuple, val: tuple) -> str | None:
        """Record the epoch, adjust the learning rate, save; returns a reason to stop or None."""
        (train_loss, train_top5), (val_loss, val_top5, bleu4, cider) = train, val
        st = self.state
        improved = record_epoch(st, self.config.monitor, epoch, train, val)
        if not improved:
            st.since_improvement += 1
            if st.since_improvement % self.config.patience_lr == 0:
                for opt in self.optimizers:
                    for group in opt.param_groups:
                        group["lr"] *= self.config.lr_decay
        st.epoch, st.epoch_step = epoch + 1, 0
        lr = self.decoder_opt.param_groups[0]["lr"]
        if self.feed:
            self.feed.write("epoch", split="train", epoch=epoch + 1, step=st.step, loss=train_loss,
                            top5=train_top5, lr=lr)
            self.feed.write("epoch", split="val", epoch=epoch + 1, step=st.step, loss=val_loss, top5=val_top5,
                            bleu4=bleu4, cider_d=cider, lr=lr, best_bleu4=st.best_bleu4, monitor=self.config.monitor,
                            best_score=st.best_score, improved=improved, samples=self.samples,
                            content=self.content)
            self._write_summaries()
        self.run.save(best=improved)
        if self.dist.is_main:
            self.progress.message(train_epoch_line(epoch + 1, self.config.epochs, train, val, lr,
                                                   time.monotonic() - self.epoch_started, improved, self.content))
        if st.since_improvement >= self.config.patience_stop:
            return no_gain(st, self.config.monitor)
        return None

    def _epoch(self, epoch: int) -> str | None:
        """Train and validate one epoch, then record and save it; returns a reason to stop or None."""
        self.epoch_started = time.monotonic()
        train = self._train_epoch(epoch)
        return self._end_of_epoch(epoch, train, self.validate())

    def fit(self) -> RunResult:
        start, first_epoch = time.monotonic(), self.state.epoch
        reason = self.run.run(self.config.epochs, self._epoch,
                              end=lambda: best_figures(self.state, self.config.monitor))
        return RunResult("train", self.config.run_name, epochs_done=self.state.epoch,
                         best_epoch=self.state.best_epoch, best_score=self.state.best_score,
                         monitor=self.config.monitor, best_bleu4=self.state.best_bleu4,
                         checkpoint=self.files.checkpoint, best_checkpoint=self.files.best, stop_reason=reason,
                         seconds=time.monotonic() - start, epochs_trained=self.state.epoch - first_epoch)
