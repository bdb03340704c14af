"""MVFoulDataModule: its typed ``__init__`` is the ``data:`` section of the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from mvcli.data.annotations import (
    LIVE_VIEW,
    SPLITS,
    VIEW_CHOICES,
    ActionRecord,
    Split,
    choose_views,
    discover_actions,
    read_split,
)
from mvcli.data.augment import (
    Augmentation,
    AugmentingCollate,
    BatchAugmenter,
    severity_strength,
)
from mvcli.data.cache import CacheReport, ClipCache, default_workers
from mvcli.data.collate import BatchMemory, ViewCollate
from mvcli.data.dataset import MultiViewDataset
from mvcli.data.sampler import (
    BalanceTarget,
    ClassBalancedSampler,
    EpochShuffleSampler,
    SamplerName,
    evaluation_sampler,
    group_ids,
    training_sampler,
)
from mvcli.data.seeding import SeededItems, run_seed
from mvcli.data.taxonomy import NUM_CLASSES
from mvcli.data.tta import TestTimeAugmentation, window_specs, with_flipped_copies
from mvcli.data.video import ClipSpec
from mvcli.utils.errors import DataError, UsageError

# Which views of an action are read: all, the live one (clip_0), the replays, or the first k.
ViewChoice = Literal["all", "live", "replays"] | PositiveInt
# The data options that decide what a model sees: restored from checkpoints, recorded in
# exported models' manifests.
PREPROCESSING_KEYS = (
    "eval_views",
    "frames_per_clip",
    "center_frame",
    "source_fps",
    "target_fps",
    "img_height",
    "img_width",
    "mean",
    "std",
)
_LABELLED = ("Train", "Valid", "Test")
# ``cache_dir: auto``: the decoded-clip cache in this folder of data.root, beside the data.
CACHE_FOLDER = ".mvcli-cache"
NO_TTA = TestTimeAugmentation()  # frozen: a safe shared default


class NothingToPredict(DataError):
    """The prediction input holds no action with a video file."""


class MVFoulDataModule(LightningDataModule):
    """SoccerNet-MVFoul data: ``<root>/<Split>/annotations.json`` + ``action_<id>/clip_<k>.*``.

    Args:
        root: dataset folder holding ``Train``, ``Valid``, ``Test`` (and ``Chall``).
        predict_root: what ``predict`` reads: a split (with or without annotations.json), a
            folder of ``action_*`` folders, or one action's folder of views. Defaults to
            ``<root>/<predict_split>``.
        predict_split: split of ``root`` used by ``predict`` when ``predict_root`` is unset.
        train_splits: labelled splits trained on, together (e.g. ``[Train, Valid]`` for a
            final fit on more data); class counts, class weights, balanced samplers and the
            augmentation's severity strength count their union. With several, action ids
            read ``<split>/<id>`` (the ids of different splits overlap).
        val_split: split validated on during ``fit`` and evaluated by ``validate``; never one
            of ``train_splits`` (checkpoints would be selected on training data). null: no
            validation loop in ``fit`` (nothing can monitor ``val/*`` metrics: keep
            ``last.ckpt``, see configs/final_fit.yaml), and ``validate`` needs one given.
        train_views: views training draws from: ``all``, ``live`` (the live broadcast, the
            view named ``clip_0``), ``replays`` (every other view) or a number k (the first
            k views in file order, clip_0 first); ``num_views`` are drawn among them. An
            action left without a view is replaced by another (train/replaced_actions).
        eval_views: views validation, test and prediction use (choices as ``train_views``).
            Saved with the preprocessing: validate/test/predict of a checkpoint use its value
            unless given. An action left without a view is scored wrong (as unreadable).
        frames_per_clip: frames decoded from each view.
        center_frame: frame the window is centred on, counted at ``source_fps`` (the foul is
            near frame 75 in MVFoul).
        source_fps: frame rate on which ``center_frame`` is counted (25 in MVFoul).
        target_fps: rate the window is sampled at; lower values cover a longer moment with
            the same number of frames. Files of any frame rate are resampled to it.
        img_height: frame height after resizing.
        img_width: frame width after resizing.
        mean: per-channel normalisation mean (RGB, [0, 1] units), applied inside the network
            on the device. Default: the mean the backbone's pretrained weights expect (read
            from torchvision's weights: 0.45 for MViT, ImageNet's for Swin3D, Kinetics' for
            the ResNets and ``tiny``). The values used are saved in checkpoints and exports.
        std: per-channel normalisation std (RGB, [0, 1] units); default: the backbone's,
            as ``mean``.
        num_views: views drawn at random per action in training among those of
            ``train_views`` (fewer when an action has fewer). Evaluation and prediction use
            every view ``eval_views`` keeps.
        min_frames: a view decoding to fewer frames than this counts as damaged.
        cache_dir: folder of the decoded-clip cache (off when unset); ``auto``:
            ``<root>/.mvcli-cache``, beside the data (off without ``root``). Each view's window
            is decoded once, at the target size, and later epochs read it without decoding
            (about 4.3 MB per view at 16x224x398). Keyed by the file (path, size, mtime) and
            every preprocessing option, so it is never stale. Built before training, once per
            node (or ahead of it with ``mvcli cache``); damaged views are recorded there.
        cache_workers: threads building the cache (default: every available CPU core).
        batch_size: actions per training batch.
        eval_batch_size: actions per evaluation/prediction batch (default: ``batch_size``).
        num_workers: data loading processes (0 decodes in the main process; default:
            ``min(8, available CPU cores)``). They persist across epochs.
        pin_memory: page-locked host memory, for faster copies to a GPU (with CUDA only;
            with ``num_workers`` 0 batches are assembled in it directly).
        sampler: how training actions are drawn each epoch: ``natural`` (a shuffle),
            ``balanced_offence_severity`` / ``balanced_action`` (every class of that head
            equally likely), ``balanced_joint`` (every present (offence-severity, action)
            pair equally likely), or ``progressive`` (from natural at epoch 0 to balanced on
            ``progressive_target`` at epoch ``progressive_epochs``, linearly in the
            sampling weights). Balanced samplers draw with replacement, one dataset's worth
            per epoch, from the seed and the epoch only (so DDP ranks get disjoint shards).
        progressive_epochs: epochs over which ``progressive`` moves from natural to balanced.
        progressive_target: what ``progressive`` balances: ``offence_severity``, ``action``
            or ``joint``.
        allow_outside_root: read views that symlinks place outside ``root`` (or outside
            ``predict_root``). Off: they are left out and reported, so no annotation or
            link can make mvcli read files outside the dataset.
        augmentation: training augmentation (``preset`` none/mild/moderate/aggressive, every
            op's probability and magnitude overridable; see ``mvcli/data/augment.py``), run
            on the device after the batch transfer (``gpu: true``) or in the loader workers.
            Never applied in validate/test/predict.
        tta: test-time augmentation of every evaluation loader (validate, test, predict and
            a fit's validation, so the best checkpoint is chosen on what ``test`` reports):
            ``flip`` and ``window_offsets`` (:class:`mvcli.data.tta.TestTimeAugmentation`);
            the softmax probabilities of the copies are averaged. A choice of each run: not
            restored from a checkpoint.
    """

    def __init__(
        self,
        root: Path | None = None,
        predict_root: Path | None = None,
        predict_split: Split = "Test",
        train_splits: list[Split] = ["Train"],  # noqa: B006 - copied, never changed
        val_split: Split | None = "Valid",
        train_views: ViewChoice = "all",
        eval_views: ViewChoice = "all",
        # Defaults: ClipSpec's, defined once.
        frames_per_clip: PositiveInt = ClipSpec.num_frames,
        center_frame: NonNegativeInt = ClipSpec.center_frame,
        source_fps: PositiveFloat = ClipSpec.source_fps,
        target_fps: PositiveFloat = ClipSpec.target_fps,
        img_height: PositiveInt = ClipSpec.height,
        img_width: PositiveInt = ClipSpec.width,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        num_views: PositiveInt = 2,
        min_frames: PositiveInt = ClipSpec.min_frames,
        cache_dir: Literal["auto"] | Path | None = None,
        cache_workers: PositiveInt | None = None,
        batch_size: PositiveInt = 8,
        eval_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt | None = None,
        pin_memory: bool = True,
        sampler: SamplerName = "natural",
        progressive_epochs: NonNegativeInt = 10,
        progressive_target: BalanceTarget = "offence_severity",
        allow_outside_root: bool = False,
        augmentation: Augmentation | None = None,
        tta: TestTimeAugmentation = NO_TTA,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["augmentation", "tta"])
        self.hparams["train_splits"] = _check_splits(train_splits, val_split)
        for name, choice in (("train_views", train_views), ("eval_views", eval_views)):
            self.hparams[name] = _check_view_choice(choice, f"data.{name}")
        # Saved absolute, so the checkpoint finds its training data from any folder.
        root = Path(root).expanduser().resolve() if root is not None else None
        self.hparams["root"] = str(root) if root is not None else None
        # Plain values in checkpoints (they load with weights_only=True).
        self.augmentation = augmentation or Augmentation()
        self.augmentation.resolved()  # bad values fail at start-up, not at the first batch
        self.hparams["augmentation"] = self.augmentation.to_dict()
        self.augmenter: BatchAugmenter | None = None
        self._host_severity: torch.Tensor | None = None  # the batch in transfer's labels
        self.root = Path(root) if root is not None else None
        self.predict_root = Path(predict_root) if predict_root is not None else None
        self.spec = ClipSpec(
            num_frames=frames_per_clip,
            center_frame=center_frame,
            source_fps=source_fps,
            target_fps=target_fps,
            height=img_height,
            width=img_width,
            min_frames=min_frames,
        )
        self.tta = TestTimeAugmentation.of(tta)
        self.tta.check(self.spec)  # a bad window fails at start-up, naming the option
        self.hparams["tta"] = self.tta.to_dict()
        # The dataset's decode function: the cache when enabled (picklable, for workers).
        if cache_dir == "auto":
            cache_dir = self.root / CACHE_FOLDER if self.root is not None else None
        self.cache = ClipCache(cache_dir) if cache_dir is not None else None
        # Batch memory of every loader of this module (reused buffers in the main process).
        self.batch_memory = BatchMemory(pin=self._pin_memory)
        self._records: dict[str, list[ActionRecord]] = {}
        self._training: list[ActionRecord] | None = None
        self._reported: set[tuple[str, str]] = set()  # (option, source): reported once
        self.datasets: dict[str, MultiViewDataset] = {}

    @property
    def num_classes(self) -> dict[str, int]:
        """Classes per head, linked to the model."""
        return dict(NUM_CLASSES)

    @property
    def class_counts(self) -> dict[str, list[int]]:
        """Training actions per class of each head (every training split), for class-weighted
        losses."""
        labels = self.train_labels()
        return {
            head: torch.bincount(torch.as_tensor(labels[head]), minlength=n).tolist()
            for head, n in NUM_CLASSES.items()
        }

    def train_labels(self, records: list[ActionRecord] | None = None) -> dict[str, list[int]]:
        """Per head, the class of each training action, in dataset order."""
        records = self.training_records() if records is None else records
        return {head: [getattr(r.labels, head) for r in records] for head in NUM_CLASSES}

    @property
    def balanced_heads(self) -> tuple[str, ...]:
        """Heads whose classes the training sampler balances (``progressive`` included)."""
        target = self._balance_target()
        if target is None:
            return ()
        return tuple(NUM_CLASSES) if target == "joint" else (target,)

    def _balance_target(self) -> str | None:
        name = self.hparams.sampler
        if name == "natural":
            return None
        if name == "progressive":
            return self.hparams.progressive_target
        return name.removeprefix("balanced_")

    def train_sampler(self) -> ClassBalancedSampler | None:
        """The balanced training order over ``datasets["train"]`` (None: the ``natural``
        sampler, a seeded shuffle: EpochShuffleSampler)."""
        target = self._balance_target()
        if target is None:
            return None
        records = self.datasets["train"].records
        groups = group_ids(self.train_labels(records), target)
        epochs = self.hparams.progressive_epochs if self.hparams.sampler == "progressive" else None
        # The run's seed (same on every process), so DDP shards stay disjoint.
        return ClassBalancedSampler(groups, progressive_epochs=epochs, seed=run_seed())

    # -- reading -----------------------------------------------------------------------------
    def split_dir(self, split: str) -> Path:
        if self.root is None:
            raise UsageError(
                "data.root is not set: pass --data.root DIR, the dataset folder holding "
                f"{'/'.join(SPLITS)} (or set it in the config's data: section)"
            )
        path = self.root / split
        if not (path / "annotations.json").is_file():
            raise DataError(
                f"{path / 'annotations.json'} not found: data.root must hold "
                f"{'/'.join(SPLITS)} folders with annotations.json"
                + (
                    _split_folder_hint(self.root)
                    or " (make a synthetic set with `python -m mvcli.data.synthetic --root DIR`)"
                )
            )
        return path

    def records(self, split: str) -> list[ActionRecord]:
        """Labelled actions of a split, read once; skipped actions reported once by reason."""
        if split not in self._records:
            # Evaluation keeps labelled actions without a view file: like the official
            # evaluator, it counts them (as wrong). Training has nothing to learn from them.
            records, report = read_split(
                self.split_dir(split),
                require_labels=True,
                require_views=split in self.hparams.train_splits,
                root=self.root,
                allow_outside_root=self.hparams.allow_outside_root,
            )
            rank_zero_info(report.summary())
            if not records:
                raise ValueError(f"{report.source}: no usable action (see the report above)")
            self._records[split] = records
        return self._records[split]

    def training_records(self) -> list[ActionRecord]:
        """The actions of every training split (``train_splits``), in that order, with the
        views ``train_views`` keeps; ids ``<split>/<id>`` when there are several splits."""
        if self._training is None:
            splits = self.hparams.train_splits
            records = []
            for split in splits:
                prefix = f"{split}/" if len(splits) > 1 else ""
                records += [
                    dataclasses.replace(r, action_id=prefix + r.action_id)
                    for r in self._chosen(self.records(split), "train_views", split)
                ]
            self._training = records
        return self._training

    def evaluation_records(self, split: str) -> list[ActionRecord]:
        """The labelled actions of a split, with the views ``eval_views`` keeps."""
        return self._chosen(self.records(split), "eval_views", split)

    def _chosen(self, records: list[ActionRecord], option: str, source: str) -> list[ActionRecord]:
        """``records`` with the views ``data.<option>`` keeps; actions it leaves without a view
        stay (training replaces them, evaluation scores them wrong), reported once."""
        choice = self.hparams[option]
        if choice == "all":
            return records
        chosen = [dataclasses.replace(r, views=choose_views(r.views, choice)) for r in records]
        emptied = [
            r.action_id for r, c in zip(records, chosen, strict=True) if r.views and not c.views
        ]
        if not emptied:
            return chosen
        what = _describe_choice(choice)
        if len(emptied) == sum(1 for r in records if r.views):
            raise DataError(
                f"data.{option} {choice}: no action of {source} has a {what}, so none is left "
                f"with a view; pass another --data.{option} (all, live, replays or a number)"
            )
        if (option, source) not in self._reported:
            self._reported.add((option, source))
            fate = (
                "another training action is served in their place (train/replaced_actions)"
                if option == "train_views"
                else "they are scored as wrong, as unreadable actions"
            )
            examples = ", ".join(emptied[:5]) + (", ..." if len(emptied) > 5 else "")
            rank_zero_warn(
                f"data.{option} {choice}: {len(emptied)}/{len(records)} actions of {source} "
                f"have no {what} (action {examples}); {fate}"
            )
        return chosen

    def stage_split(self, stage: str) -> str | None:
        """The split a trainer function evaluates: ``validate`` -> ``val_split``, ``test`` ->
        Test (None for others, or without ``val_split``)."""
        return {"validate": self.hparams.val_split, "test": "Test"}.get(stage)

    def _val_split(self) -> str:
        split = self.hparams.val_split
        if split is None:
            raise UsageError(
                "data.val_split is null (no validation split), so there is nothing to "
                "validate on: pass --data.val_split SPLIT (Valid, or Test)"
            )
        return split

    @property
    def predict_input(self) -> Path | None:
        """What ``predict`` reads: ``predict_root``, else ``<root>/<predict_split>`` (None
        when neither is set)."""
        if self.predict_root is not None:
            return self.predict_root
        return self.root / self.hparams.predict_split if self.root is not None else None

    def predict_records(self) -> list[ActionRecord]:
        """The actions ``predict`` reads, with the views ``eval_views`` keeps."""
        root = self.predict_root or self.split_dir(self.hparams.predict_split)
        records, report = discover_actions(root, self.hparams.allow_outside_root)
        rank_zero_info(report.summary())
        if not records:
            raise NothingToPredict(f"nothing to predict in {root}: no action with a video file")
        return self._chosen(records, "eval_views", "the predict input")

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # Unreadable training actions are replaced in the data layer, never dropped from a
            # batch: every rank always takes the same number of optimizer steps.
            self.datasets["train"] = self._dataset(
                self.training_records(), self.hparams.num_views, replace_unreadable=True
            )
            split = self.hparams.val_split
            if split is None:  # no validation: val_dataloader serves none
                self.datasets.pop("val", None)
            else:
                self.datasets["val"] = self._eval_dataset(self.evaluation_records(split))
            self.augmenter = self._augmenter()
        elif stage == "validate":
            self.datasets["val"] = self._eval_dataset(self.evaluation_records(self._val_split()))
        elif stage == "test":
            self.datasets["test"] = self._eval_dataset(self.evaluation_records("Test"))
        elif stage == "predict":
            self.datasets["predict"] = self._eval_dataset(self.predict_records())

    def _augmenter(self) -> BatchAugmenter | None:
        """The training augmenter, its severity strengths from the training class counts."""
        config = self.augmentation
        strength = config.severity_strength
        if strength is None:
            counts = self.class_counts["offence_severity"]
            strength = severity_strength(counts, config.severity_max_strength)
        elif len(strength) != NUM_CLASSES["offence_severity"]:
            raise ValueError(
                "data.augmentation.severity_strength needs one value per offence-severity "
                f"class ({NUM_CLASSES['offence_severity']}), got {strength}"
            )
        augmenter = BatchAugmenter(config, strength)
        if augmenter.active:
            rank_zero_info(
                f"augmentation: {config.describe()}, on the "
                f"{'device' if config.gpu else 'loader workers'}, severity strength "
                f"{[round(s, 2) for s in strength]}"
            )
            return augmenter
        return None

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # The labels as they are on the host, for the device augmentation's draws.
        self._host_severity = batch.get("offence_severity") if isinstance(batch, dict) else None
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Training batches are augmented here, on the device (``augmentation.gpu``);
        evaluation batches get their flipped copies here (``tta.flip``)."""
        trainer = self.trainer
        if trainer is None:
            return batch
        augmenter = self.augmenter
        if trainer.training:
            if augmenter is not None and augmenter.config.gpu:
                return augmenter(batch, severity=self._host_severity)
            return batch
        if self.tta.flip and isinstance(batch, dict) and batch.get("video") is not None:
            batch["video"] = with_flipped_copies(batch["video"])
        return batch

    def _dataset(
        self,
        records: list[ActionRecord],
        num_views: int | None = None,
        replace_unreadable: bool = False,
        windows: tuple[ClipSpec, ...] = (),
    ):
        return MultiViewDataset(
            records,
            self.spec,
            num_views=num_views,
            decode=self.cache,
            replace_unreadable=replace_unreadable,
            seed=run_seed(),
            windows=windows,
        )

    def _eval_dataset(self, records: list[ActionRecord]) -> MultiViewDataset:
        """An evaluation loader's dataset: every view at every test-time window."""
        if self.tta.active:
            rank_zero_info(f"test-time augmentation (data.tta): {self.tta.describe()}")
        return self._dataset(records, windows=self.eval_windows)

    @property
    def eval_windows(self) -> tuple[ClipSpec, ...]:
        """The window of each evaluation copy (``tta.window_offsets``; the flip is not a
        window: it is made on the device)."""
        return window_specs(self.spec, self.tta.window_offsets)

    # -- decoded-clip cache ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build the clip cache for the splits the running stage reads.

        Lightning calls this once per node (local rank 0) while the other ranks wait. A
        complete cache costs one stat and one header read per view. Skipped under
        ``fast_dev_run`` and for ``predict`` (one pass): the views read are cached as read.
        """
        trainer = self.trainer
        if self.cache is None or (trainer is not None and trainer.fast_dev_run):
            return
        stage = getattr(trainer.state.fn, "value", None) if trainer is not None else None
        splits = self._stage_splits(stage)
        if splits != ():
            self.build_cache(splits)

    def _stage_splits(self, stage: str | None) -> tuple[str, ...] | None:
        """The splits a trainer function reads (None: no trainer, every labelled split;
        ``predict`` reads as it goes)."""
        val = (self.hparams.val_split,) if self.hparams.val_split is not None else ()
        if stage == "fit":
            return (*self.hparams.train_splits, *val)
        if stage == "validate":
            return val
        if stage == "test":
            return ("Test",)
        return () if stage else None

    def build_cache(
        self, splits: list[str] | tuple[str, ...] | None = None, progress: bool = True
    ) -> dict[str, CacheReport]:
        """Decode into the cache every view of ``splits`` not cached yet: those ``train_views``
        keeps of a training split (``train_splits``), at the training window; those
        ``eval_views`` keeps of the others, at every ``tta.window_offsets`` window.

        Args:
            splits: split names under ``root`` (``Chall`` included) or ``predict`` (what
                ``predict`` reads); default: the labelled splits present.
            progress: show a progress bar.
        """
        if self.cache is None:
            raise ValueError("data.cache_dir is not set: it names the folder of the clip cache")
        if splits is None:
            root = self.root if self.root is not None else Path(".")
            splits = [s for s in _LABELLED if (root / s / "annotations.json").is_file()]
        reports = {}
        for split in splits:
            if split == "predict":
                records = self.predict_records()
            elif split == "Chall":
                records, report = discover_actions(
                    self.split_dir(split), self.hparams.allow_outside_root
                )
                rank_zero_info(report.summary())
                records = self._chosen(records, "eval_views", split)
            elif split in self.hparams.train_splits:
                records = self._chosen(self.records(split), "train_views", split)
            else:
                records = self.evaluation_records(split)
            views = [view for record in records for view in record.views]
            workers = self.hparams.cache_workers
            for label, spec in self._cached_windows(split):
                report = self.cache.build(
                    views, spec, workers=workers, progress=progress, label=label
                )
                (rank_zero_warn if report.damaged or report.error else rank_zero_info)(
                    report.summary(label)
                )
                reports[label] = report
        return reports

    def _cached_windows(self, split: str) -> list[tuple[str, ClipSpec]]:
        """(label, spec) of each window a split is read at: training's window for a training
        split, every test-time window for the others (labelled ``<split>@<offset>`` but for 0)."""
        if split in self.hparams.train_splits:
            return [(split, self.spec)]
        offsets = self.tta.window_offsets
        return [
            (split if offset == 0 else f"{split}@{offset:+d}", spec)
            for offset, spec in zip(offsets, self.eval_windows, strict=True)
        ]

    # -- loaders -----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        # Order and per-item random choices are functions of (seed, epoch, position) only:
        # nothing here reads or moves the global RNG, which makes a resumed run exact
        # (mvcli.callbacks.resume) and the same with any number of workers.
        dataset = self.datasets["train"]
        seed = run_seed()
        order = self.train_sampler() or EpochShuffleSampler(len(dataset), seed=seed)
        augmenter = self.augmenter
        collate = ViewCollate(self.batch_memory)
        if augmenter is not None and not augmenter.config.gpu:
            collate = AugmentingCollate(collate, augmenter)
        sampler = training_sampler(order, seed, self.trainer)
        return self._loader(
            SeededItems(dataset), self.hparams.batch_size, sampler=sampler, collate=collate
        )

    def val_dataloader(self) -> DataLoader | list:
        # No val_split: no loader, so Lightning runs no validation loop (and no sanity check).
        return self._eval_loader(self.datasets["val"]) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.datasets["test"])

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.datasets["predict"])

    def split_loader(self, split: str) -> DataLoader:
        """All actions of a split folder (``Test``, ...) in order, at the evaluation batch
        size, without a Trainer (``mvcli export``'s accuracy and calibration data)."""
        return self._loader(self._dataset(self.evaluation_records(split)), self._eval_batch_size)

    def _eval_loader(self, dataset: MultiViewDataset) -> DataLoader:
        # Under DDP, every action exactly once (no padding repeats): see evaluation_sampler.
        sampler = evaluation_sampler(dataset, self.trainer)
        return self._loader(dataset, self._eval_batch_size, sampler=sampler)

    @property
    def _pin_memory(self) -> bool:
        return self.hparams.pin_memory and _has_accelerator()

    @property
    def _eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def _loader(
        self,
        dataset: MultiViewDataset | SeededItems,
        batch_size: int,
        sampler=None,
        collate=None,
    ):
        workers = self.hparams.num_workers
        if workers is None:
            workers = min(8, default_workers())
        # Workers stay up across epochs (no re-fork, datasets keep their state) and each keeps
        # two batches in flight: enough to hide decoding jitter, cheap in memory (uint8).
        extra = {"persistent_workers": True, "prefetch_factor": 2} if workers > 0 else {}
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate or ViewCollate(self.batch_memory),
            pin_memory=self._pin_memory,
            # Workers' base seed from the loader's own generator, not the global RNG: how many
            # loaders were started (workers persist or not) must not move the training's RNG.
            generator=torch.Generator().manual_seed(run_seed()),
            **extra,
        )


def _check_splits(train_splits: list[str], val_split: str | None) -> list[str]:
    """``train_splits`` as a plain list, checked: labelled, at least one, none twice, and not
    the validation split."""
    splits = list(train_splits)
    if not splits:
        raise ValueError("data.train_splits is empty: name at least one split, e.g. [Train]")
    if len(set(splits)) != len(splits):
        raise ValueError(f"data.train_splits {splits} names a split twice")
    unlabelled = [s for s in [*splits, val_split] if s is not None and s not in _LABELLED]
    if unlabelled:
        raise ValueError(
            f"{unlabelled[0]} has no labels: data.train_splits and data.val_split take "
            f"{', '.join(_LABELLED)}"
        )
    if val_split in splits:
        raise ValueError(
            f"data.val_split {val_split} is also in data.train_splits {splits}: checkpoints "
            "would be selected on training data; validate on another split, or pass "
            "--data.val_split null (no validation, keep last.ckpt: configs/final_fit.yaml)"
        )
    return splits


def _check_view_choice(choice, option: str) -> str | int:
    """``choice`` as a plain str or int, checked (the CLI's type checks it already)."""
    if isinstance(choice, int) and not isinstance(choice, bool) and choice >= 1:
        return int(choice)
    if choice in VIEW_CHOICES:
        return str(choice)
    raise ValueError(
        f"{option} {choice!r}: expected one of {', '.join(VIEW_CHOICES)} or a number k >= 1"
    )


def _describe_choice(choice: str | int) -> str:
    """What an action lacks when ``choice`` leaves it no view."""
    if choice == "live":
        return f"view named {LIVE_VIEW} (the live one)"
    if choice == "replays":
        return f"view other than {LIVE_VIEW} (a replay)"
    return "view"


def _has_accelerator() -> bool:
    return torch.cuda.is_available()


def _split_folder_hint(root: Path) -> str:
    """``; data.root X looks like a split folder ...`` when ``root`` is one split, not the set."""
    if root.name in SPLITS or (root / "annotations.json").is_file():
        return (
            f"; data.root {root} looks like a split folder (its name is a split or it holds "
            f"annotations.json itself): pass its parent, --data.root {root.parent}"
        )
    return ""
