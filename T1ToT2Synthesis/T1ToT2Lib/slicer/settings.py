"""Typed settings of the two panels, each building its ``t1tot2`` command line (``asArgList``).

One place turns what a panel shows into a command: the Training panel's
parameter node becomes a :class:`TrainingSettings`, the Synthesis panel's a
:class:`SynthesisSettings`.  The product's training defaults are read from
:mod:`T1ToT2Lib.training.presets` (what ``t1tot2 train`` uses too), never
copied: a new Training parameter node is filled from :meth:`TrainingSettings.for_model`.
No Qt and no MRML here.
"""

from __future__ import annotations

import dataclasses
import pathlib

from ..core.errors import T1ToT2Error
from ..core.volume import PLANES
from ..training.presets import RECOMMENDED, correction_trains, training_defaults

#: Parameter-node attribute -> settings field, for the fields the panel shows.
_PARAMETER_FIELDS = {"modelType": "model", "epochs": "epochs", "learningRate": "learning_rate",
                     "batchSize": "batch_size", "contextSlices": "context", "generatorWidth": "generator_width",
                     "residualBlocks": "residual_blocks", "upsampling": "upsampling",
                     "maxStepsPerEpoch": "max_steps_per_epoch", "device": "device", "alignT2": "align",
                     "pairsCsvPath": "pairs_csv", "phantomSubjects": "phantom_subjects", "randomizeAcquisition": "randomize"}
#: Settings a model choice proposes (from the presets) in the Training panel.
PROPOSED_FIELDS = ("epochs", "learning_rate", "batch_size", "context", "upsampling")


def path_is_empty(path) -> bool:
    """True for what an empty path line edit gives: None, "" or "." (a parameter node's empty Path holds '.')."""
    return path is None or str(path).strip() in ("", ".")


@dataclasses.dataclass
class TrainingSettings:
    """What ``t1tot2 train`` is asked to do from the Training panel.

    The refiner trains with its own schedule (rate, batch, patches, 2.5-D input from the presets): only its
    constant-rate epochs are passed, with as many decaying ones, and only when its CNN stage trains: with the
    recommended ``correction`` (auto) that needs a held-out pair, the validation pair or phantom subjects
    (``t1tot2 train`` refuses CNN options otherwise).  The GANs get every panel setting.
    """

    model: str = RECOMMENDED["model"]
    planes: tuple = tuple(PLANES)
    #: None: the presets' value for ``model`` (filled in on creation).
    epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    context: int | None = None
    upsampling: str | None = None
    #: Network widths; None leaves them to the network's own defaults.
    generator_width: int | None = None
    residual_blocks: int | None = None
    max_steps_per_epoch: int = 0
    device: str = "auto"
    align: bool = False
    #: Further training data (``--pairs``, ``--phantom-subjects``, ``--randomize``); with them only the refiner trains.
    pairs_csv: str | None = None
    phantom_subjects: int = 0
    randomize: bool = False
    #: The refiner's CNN stage (``t1tot2 train --correction``); None: the presets' value.
    correction: str | None = None

    def __post_init__(self):
        if path_is_empty(self.pairs_csv):
            self.pairs_csv = None
        defaults = training_defaults(self.model)
        preset = {"epochs": int(defaults["epochs"]), "learning_rate": float(defaults["lr"]),
                  "batch_size": int(defaults["batch_size"]), "context": int(defaults["context"]),
                  "upsampling": defaults["network"].get("upsample", "transpose")}
        for field, value in preset.items():
            if getattr(self, field) is None:
                setattr(self, field, value)
        if self.correction is None:
            self.correction = defaults["correction"]

    def trains_cnn(self, validation: bool) -> bool:
        """Whether ``t1tot2 train`` trains the refiner's CNN stage with these settings (``validation``: a validation
        pair is given)."""
        return correction_trains(self.model, self.correction, validation or bool(self.phantom_subjects))

    @classmethod
    def for_model(cls, model: str, **fields) -> "TrainingSettings":
        """The presets' defaults for ``model`` (``t1tot2 train --model MODEL``'s), then ``fields``."""
        return cls(model=model, **fields)

    @classmethod
    def from_parameters(cls, parameters) -> "TrainingSettings":
        """The settings a Training parameter node (or any object with its attribute names) shows."""
        fields = {field: getattr(parameters, name) for name, field in _PARAMETER_FIELDS.items()
                  if hasattr(parameters, name)}
        chosen = [plane for plane, on in zip(PLANES, (parameters.planeAxial, parameters.planeCoronal,
                                                      parameters.planeSagittal)) if on]
        if not chosen:
            raise T1ToT2Error("no training plane is selected: tick at least one of axial, coronal, sagittal")
        return cls(planes=tuple(chosen), **fields)

    def propose_to(self, parameters) -> None:
        """Write the model's proposed settings (:data:`PROPOSED_FIELDS`) into a Training parameter node."""
        names = {field: name for name, field in _PARAMETER_FIELDS.items()}
        for field in PROPOSED_FIELDS:
            setattr(parameters, names[field], getattr(self, field))

    def _data_key(self, pairs) -> tuple:
        """All :meth:`check_data` depends on: these settings and which volumes of each pair are given."""
        return dataclasses.astuple(self), tuple((t1 is None, t2 is None) for t1, t2 in pairs)

    def check_data(self, pairs) -> tuple:
        """Refuse, in one line, training data ``t1tot2 train`` refuses: ``pairs`` are the (T1, T2) files (or nodes)
        given.  Returns a record of what was accepted, for :meth:`asArgList` ``checked``."""
        if any(t1 is None or t2 is None for t1, t2 in pairs):
            raise T1ToT2Error("a training pair lacks its T1 or T2: choose both volumes of every pair")
        if int(self.phantom_subjects) < 0:
            raise T1ToT2Error(f"phantom subjects {self.phantom_subjects} must be at least 0")
        if not pairs and not self.pairs_csv and not self.phantom_subjects:
            raise T1ToT2Error("no training data: choose the training T1 and T2, a pairs CSV or phantom subjects")
        if self.randomize and not self.phantom_subjects:
            raise T1ToT2Error("randomized acquisitions apply to phantom subjects: set phantom subjects above 0 or untick randomize")
        if (len(pairs) > 1 or self.pairs_csv or self.phantom_subjects) and self.model != "refiner":
            raise T1ToT2Error(f"several training pairs (additional pairs, a pairs CSV, phantom subjects) train the refiner "
                              f"only, not {self.model}: choose the refiner model or train on one pair")
        if self.pairs_csv:
            from ..training.pairs import read_pairs_csv

            read_pairs_csv(self.pairs_csv)  # a missing file or a row without two columns, said before any job starts
        return self._data_key(pairs)

    def asArgList(self, t1, t2, out, val_t1=None, val_t2=None, resume=False, extra_pairs=(), checked=None) -> list:
        """``t1tot2 train`` arguments for these settings and volume files (strings); ``extra_pairs`` are further
        (T1, T2) files, after the first pair (``t1``, ``t2``: None when the data is only a CSV or phantom subjects).

        The data is checked (:meth:`check_data`) unless ``checked``, what a check returned, is for these very
        settings and pairs: one Start reads a pairs CSV once."""
        out = pathlib.Path(out)
        pairs = ([(t1, t2)] if t1 is not None or t2 is not None else []) + [tuple(pair) for pair in extra_pairs]
        if checked is None or checked != self._data_key(pairs):
            self.check_data(pairs)
        args = ["train"] + [a for t1, t2 in pairs for a in ("--t1", t1, "--t2", t2)]
        args += ["--model", self.model, "--planes", ",".join(self.planes), "--device", self.device, "--out", out,
                 "--progress", "json"]
        cnn = self.trains_cnn(val_t1 is not None and val_t2 is not None)
        if cnn:
            args += ["--checkpoint-dir", out.with_name(out.name.replace(".safetensors", "") + ".checkpoints")]
        if self.model == "refiner":
            args += ["--correction", self.correction]
            if cnn:
                args += ["--epochs", self.epochs, "--epochs-decay", self.epochs]
        else:
            args += ["--epochs", self.epochs, "--lr", repr(float(self.learning_rate)), "--batch-size", self.batch_size,
                     "--context", self.context, "--upsample", self.upsampling]
            if self.generator_width:
                args += ["--ngf", self.generator_width]
        if self.model in ("cyclegan", "unit") and self.residual_blocks:
            args += ["--n-blocks", self.residual_blocks]
        if val_t1 is not None and val_t2 is not None:
            args += ["--val-t1", val_t1, "--val-t2", val_t2]
        if self.max_steps_per_epoch and cnn:
            args += ["--max-steps-per-epoch", self.max_steps_per_epoch]
        if self.align:
            args.append("--align")
        if self.pairs_csv:
            args += ["--pairs", self.pairs_csv]
        if self.phantom_subjects:
            args += ["--phantom-subjects", int(self.phantom_subjects)]
        if self.randomize:
            args.append("--randomize")
        if resume:
            if not cnn:
                raise T1ToT2Error("nothing to resume: without a validation pair or phantom subjects the refiner trains "
                                  "no CNN stage, only its trees (they take minutes): press Start")
            args.append("--resume")
        return [str(a) for a in args]


@dataclasses.dataclass
class SynthesisSettings:
    """What ``t1tot2 synthesize`` is asked to do from the Synthesis panel (or the web page)."""

    model_path: pathlib.Path
    plane: str = "auto"
    device: str = "auto"
    precision: str = "fp32"

    def asArgList(self, t1, output, error_map=None) -> list:
        args = ["synthesize", self.model_path, t1, output, "--plane", self.plane, "--device", self.device,
                "--precision", self.precision]
        if error_map is not None:
            args += ["--uncertainty", error_map]
        return [str(a) for a in [*args, "--progress", "json"]]
