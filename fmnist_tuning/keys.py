"""Names shared across the package: metrics, study and trial attributes, output files.

One constant per name, so that logging, pruning, early stopping, checkpoints, the final model and
the report can never disagree on a spelling (a typo in a monitored metric silently disables
pruning; one in an attribute key silently loses a value).
"""

from __future__ import annotations

# Metrics logged by the LightningModule. VAL_ACC is the monitored one: logged, watched by the
# pruning callback, early stopping and checkpointing, and returned by the objective.
VAL_ACC = "val/acc"
VAL_LOSS = "val/loss"
TRAIN_LOSS = "train/loss"
HP_METRIC = "hp_metric"  # TensorBoard's HParams value of a trial: its best VAL_ACC so far

# Trial user attributes.
EPOCHS = "epochs"  # epochs the trial trained (pruning and early stopping end many early)
CHECKPOINT = "checkpoint"  # path of the weights at its best epoch
CHECKPOINT_ARTIFACT = "checkpoint_artifact"  # the same file's id in the artifact store
TRAIN_SECONDS = "train_seconds"  # seconds inside trainer.fit
WORKER = "worker"  # host:pid of the process that ran it
FAIL_REASON = "fail_reason"  # why it failed (or was pruned) when not for its accuracy
VAL_CURVE = "val_curve"  # its validation accuracy after every epoch (also in a front study)
PARAMS = "params"  # the network's parameter count (also its constraint's name under a budget)
LATENCY_MS = "latency_ms"  # its CPU time per image, batch 1 (also a constraint and a metric)

# Study user attributes.
RUN_SETTINGS = "run_settings"  # what its values depend on, stored when the study is created
WORKER_SLOTS = "worker_slots"  # worker processes started so far (each seeds its own sampler)
FINAL_MODEL = "final_model "  # + a final model's name: its one test score (results.model_key)
FINAL_CURRENT = "final_current"  # the name of the final model the latest best.json describes
FINAL_MODELS = "final_models"  # what earlier versions kept instead: {"current", "models"}
TEST_PASS = "test_pass "  # + a unique id: one read of the test set ({"model", "worker", "at"})
DEPLOY = "deploy "  # + a final model's name: its export's checks (agreement, latencies)
CHECKPOINT_REMOVED = "checkpoint_removed "  # + a trial number: its stored checkpoint is deleted

# Files and folders in the output directory.
BEST_JSON = "best.json"
MODEL_ONNX = "model.onnx"  # the final model, exported
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
CLAIM_LOCK = ".claim.lock"  # serialises "count, then start a trial" between processes


def trial_name(number: int) -> str:
    """The name shared by a trial's TensorBoard run and its checkpoint file."""
    return f"trial_{number:04d}"
