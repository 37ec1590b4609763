"""Pre-training with Accelerate on real chips: losses fall, exact resume, non-finite stop, init-from, outputs."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clay_hf import ClayImageProcessor
from clay_hf.errors import CheckpointError, ClayConfigError, OutputExistsError
from clay_hf.training.pretraining import NonFiniteLossError, TrainingConfig, find_latest_checkpoint, lr_lambda, train

from .launch import torchrun

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def s2_chips(s2_files) -> list[np.ndarray]:
    """32 real Sentinel-2 chips of 32 x 32 px at 20 m (uint16 reflectance, 10 bands)."""
    from clay_hf.geodata.raster import iter_chips, open_source

    with open_source(s2_files, resolution=20.0) as source:
        return [chip["pixels"] for chip, _ in zip(iter_chips(source, 32), range(32))]


class _ChipLoader:
    """A minimal stand-in for the streamed loader: real chips, a seeded order per epoch, one band set."""

    def __init__(self, chips, processor, batch_size, poison_batch=None):
        self.chips, self.processor, self.batch_size, self.epoch = chips, processor, batch_size, 0
        self.poison_batch = poison_batch
        self.served = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = np.random.default_rng(self.epoch).permutation(len(self.chips))
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            pixels = np.stack([self.chips[i] for i in order[start : start + self.batch_size]]).astype(np.float32)
            n = len(pixels)
            batch = dict(
                self.processor(
                    pixels, sensor="sentinel-2-l2a", lat=[40.7] * n, lon=[-74.0] * n, datetimes=["2019-06-01"] * n
                )
            )
            batch["sensor"] = "sentinel-2-l2a"
            self.served += 1
            if self.poison_batch is not None and self.served == self.poison_batch:
                batch["pixel_values"] = batch["pixel_values"] * float("inf")
            yield batch


def _factory(chips, poison_batch=None):
    def factory(config, processor, rank, world_size):
        return _ChipLoader(chips, processor, config.batch_size, poison_batch)

    return factory


def _prepacking_state(model) -> tuple[bool, int]:
    from clay_hf.cpu_inference import CpuPrepackedLinear, cpu_prepacked_bytes

    return any(isinstance(m, CpuPrepackedLinear) for m in model.modules()), cpu_prepacked_bytes(model)


def _config(tmp_path, **overrides) -> TrainingConfig:
    settings = dict(
        dataset="unused",
        output_dir=str(tmp_path),
        model="tiny",
        max_steps=8,
        batch_size=8,
        learning_rate=1e-3,
        teacher="tiny-random",
        teacher_image_size=56,
        checkpoint_every=3,
        log_every=1,
        time_latlon_dropout=0.0,
    )
    settings.update(overrides)
    return TrainingConfig(**settings)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    values = [lr_lambda(s, warmup_steps=4, max_steps=20, min_lr_ratio=0.1) for s in range(21)]
    assert values[0] == pytest.approx(1 / 5) and values[3] == pytest.approx(4 / 5)
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[20] == pytest.approx(0.1)
    assert lr_lambda(12, 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_training_config_errors_name_the_values(tmp_path):
    with pytest.raises(ClayConfigError, match="max_steps must be at least 1, got 0"):
        _config(tmp_path, max_steps=0)
    with pytest.raises(ClayConfigError, match="mixed_precision must be 'no', 'bf16' or 'fp16', got 'fp8'"):
        _config(tmp_path, mixed_precision="fp8")
    with pytest.raises(ClayConfigError, match="neither a preset"):
        train(_config(tmp_path, model="no-such-model.yaml"), dataloader_factory=_factory([]), show_progress=False)


def test_losses_fall_and_the_teacher_contributes(tmp_path, s2_chips):
    prepacking = []  # training never has the opt-in prepacked CPU inference path (weights change every step)
    summary = train(
        _config(tmp_path, max_steps=12),
        dataloader_factory=_factory(s2_chips),
        show_progress=False,
        step_callback=lambda step, model, losses: prepacking.append(_prepacking_state(model)),
    )
    assert prepacking == [(False, 0)] * 12
    first, last = summary["first"], summary["last"]
    print(
        "reconstruction",
        first["reconstruction_loss"],
        "->",
        last["reconstruction_loss"],
        "representation",
        first["representation_loss"],
        "->",
        last["representation_loss"],
    )
    assert last["reconstruction_loss"] < 0.85 * first["reconstruction_loss"]
    assert last["representation_loss"] < first["representation_loss"]
    assert last["loss"] == pytest.approx(0.9 * last["reconstruction_loss"] + 0.1 * last["representation_loss"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"loss", "reconstruction_loss", "representation_loss", "lr", "chips_per_s", "epoch"} <= set(records[0])
    assert records[-1]["epoch"] == 2  # 32 chips / 8 = 4 batches per epoch: the loader cycled over epochs

    from transformers import AutoModel, AutoModelForPreTraining

    final = tmp_path / "final"
    assert (final / "model.safetensors").is_file() and (final / "preprocessor_config.json").is_file()
    model, info = AutoModelForPreTraining.from_pretrained(final, output_loading_info=True)
    assert not any(info.values())
    assert isinstance(AutoModel.from_pretrained(final), torch.nn.Module)
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-00000006", "checkpoint-00000009", "checkpoint-00000012"]  # keep 3


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, s2_chips):
    full = train(_config(tmp_path / "full"), dataloader_factory=_factory(s2_chips), show_progress=False)
    # The interrupted run ends after 5 steps (checkpoint at step 5), mid-epoch and after a checkpoint at 3.
    part = train(_config(tmp_path / "part", stop_after=5), dataloader_factory=_factory(s2_chips), show_progress=False)
    assert part["step"] == 5 and part["final_model"] is None
    resumed = train(_config(tmp_path / "part", resume=True), dataloader_factory=_factory(s2_chips), show_progress=False)
    assert resumed["step"] == 8
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "part" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
    assert full["last"]["loss"] == pytest.approx(resumed["last"]["loss"], rel=1e-5)


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, s2_chips):
    config = _config(tmp_path, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step 4.*checkpoint-00000002"):
        train(config, dataloader_factory=_factory(s2_chips, poison_batch=4), show_progress=False)
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-00000002"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    weights = load_file(tmp_path / "checkpoints" / "checkpoint-00000002" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_continue_from_the_converted_parity_checkpoint(tmp_path, converted_micro, s2_chips):
    from transformers import AutoModel

    before = AutoModel.from_pretrained(converted_micro)
    config = _config(tmp_path, model="tiny", init_from=str(converted_micro), teacher=None, max_steps=3)
    summary = train(config, dataloader_factory=_factory(s2_chips), show_progress=False)
    after = AutoModel.from_pretrained(tmp_path / "final")
    assert after.config.hidden_size == before.config.hidden_size == 64  # the micro checkpoint, not the preset
    assert "representation_loss" not in summary["last"]
    moved = [n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(p, q)]
    assert moved  # the weights trained on
    processor = ClayImageProcessor.from_pretrained(tmp_path / "final")
    assert processor.patch_size == 4


def test_init_from_with_a_teacher_of_another_width_is_refused(tmp_path, converted_micro, s2_chips):
    config = _config(tmp_path, init_from=str(converted_micro), teacher="tiny-random")
    with pytest.raises(ClayConfigError, match="teacher_dim=48 but the teacher embeds into 32"):
        train(config, dataloader_factory=_factory(s2_chips), show_progress=False)


# ---- one run per output folder -------------------------------------------------------------------------------
def _checkpoints(output: Path) -> list[str]:
    return sorted(p.name for p in (output / "checkpoints").iterdir())


def _steps(output: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a: Path, b: Path) -> None:
    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_a_new_run_into_a_folder_with_another_run_is_refused_unless_overwrite(tmp_path, s2_chips):
    """The old run's checkpoints 4, 6, 8 would outlive the new run's 2 and 4 under keep-last-3 pruning."""
    old = train(_config(tmp_path, checkpoint_every=2), dataloader_factory=_factory(s2_chips), show_progress=False)
    assert _checkpoints(tmp_path) == ["checkpoint-00000004", "checkpoint-00000006", "checkpoint-00000008"]
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoints" / "README.txt").write_text("mine too")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".lock")}

    new = _config(tmp_path, max_steps=4, checkpoint_every=2)
    expected = (
        rf"{re.escape(str(tmp_path))} holds another training run \(checkpoints up to step 8, final/, "
        r"metrics.jsonl\);.*Pass --resume to continue that run, or --overwrite to delete"
    )
    with pytest.raises(OutputExistsError, match=expected) as refused:
        train(new, dataloader_factory=_factory(s2_chips), show_progress=False)
    assert refused.value.path == str(tmp_path)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".lock")}
    assert after == before  # nothing written, nothing deleted

    with pytest.raises(ClayConfigError, match="resume and overwrite exclude each other"):
        _config(tmp_path, resume=True, overwrite=True)
    summary = train(
        _config(tmp_path, max_steps=4, checkpoint_every=2, overwrite=True),
        dataloader_factory=_factory(s2_chips),
        show_progress=False,
    )
    assert summary["run_id"] != old["run_id"]
    assert _checkpoints(tmp_path) == ["README.txt", "checkpoint-00000002", "checkpoint-00000004"]  # none pruned
    assert _steps(tmp_path) == [1, 2, 3, 4]  # this run's metrics only
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == summary["run_id"]
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-00000004" / "trainer_state.json").read_text())
    assert state["run_id"] == summary["run_id"] and state["step"] == 4
    _assert_same_weights(
        tmp_path / "final" / "model.safetensors", tmp_path / "checkpoints" / "checkpoint-00000004" / "model.safetensors"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"  # the user's files stay
    assert (tmp_path / "checkpoints" / "README.txt").read_text() == "mine too"

    # --resume replaces final/ (a Clay model folder) at the end, and refuses up front where final/ is something else
    shutil.rmtree(tmp_path / "final")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "draft.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"final is not a Clay model folder, .*move it away, then --resume"):
        train(_config(tmp_path, max_steps=6, resume=True), dataloader_factory=_factory(s2_chips), show_progress=False)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, s2_chips) -> Path:
    """The final weights of an uninterrupted 8-step run (checkpoint_every does not change them)."""
    output = tmp_path_factory.mktemp("reference")
    train(_config(output, checkpoint_every=2), dataloader_factory=_factory(s2_chips), show_progress=False)
    return output / "final" / "model.safetensors"


def test_pruning_only_deletes_checkpoints_of_the_current_run(tmp_path, s2_chips, reference_run):
    part = _config(tmp_path, checkpoint_every=2, keep_checkpoints=2, stop_after=4)
    run_id = train(part, dataloader_factory=_factory(s2_chips), show_progress=False)["run_id"]
    foreign = tmp_path / "checkpoints" / "checkpoint-00000001"  # another run's checkpoint, older than this run's
    shutil.copytree(tmp_path / "checkpoints" / "checkpoint-00000002", foreign)
    state = json.loads((foreign / "trainer_state.json").read_text())
    (foreign / "trainer_state.json").write_text(json.dumps({**state, "step": 1, "run_id": "another-run"}))

    resumed = train(
        _config(tmp_path, checkpoint_every=2, keep_checkpoints=2, resume=True),
        dataloader_factory=_factory(s2_chips),
        show_progress=False,
    )
    assert resumed["run_id"] == run_id  # carried over by --resume
    assert _checkpoints(tmp_path) == ["checkpoint-00000001", "checkpoint-00000006", "checkpoint-00000008"]
    _assert_same_weights(reference_run, tmp_path / "final" / "model.safetensors")


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.bin", "trainer_state.json", "clay_rank0.pt"])
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, s2_chips, reference_run, damaged, caplog):
    train(
        _config(tmp_path, checkpoint_every=2, stop_after=6), dataloader_factory=_factory(s2_chips), show_progress=False
    )
    assert _checkpoints(tmp_path) == ["checkpoint-00000002", "checkpoint-00000004", "checkpoint-00000006"]
    broken = tmp_path / "checkpoints" / "checkpoint-00000006" / damaged
    _truncate(broken)
    with caplog.at_level(logging.INFO, logger="clay_hf.training.pretraining"):
        summary = train(
            _config(tmp_path, checkpoint_every=2, resume=True),
            dataloader_factory=_factory(s2_chips),
            show_progress=False,
        )
    assert f"checkpoint checkpoint-00000006 is damaged: {broken} " in caplog.text
    assert f"resumed from {tmp_path / 'checkpoints' / 'checkpoint-00000004'} at step 4" in caplog.text
    assert summary["step"] == 8
    _assert_same_weights(reference_run, tmp_path / "final" / "model.safetensors")  # as if never interrupted
    assert _checkpoints(tmp_path) == ["checkpoint-00000004", "checkpoint-00000006", "checkpoint-00000008"]
    load_file(tmp_path / "checkpoints" / "checkpoint-00000006" / "model.safetensors")  # written again, whole


def test_resume_without_an_intact_checkpoint_names_every_damaged_file(tmp_path, s2_chips, converted_micro):
    train(
        _config(tmp_path, checkpoint_every=2, stop_after=4), dataloader_factory=_factory(s2_chips), show_progress=False
    )
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(checkpoints, tmp_path / "intact")
    for step in (2, 4):
        _truncate(checkpoints / f"checkpoint-0000000{step}" / "model.safetensors")
    resume = _config(tmp_path, checkpoint_every=2, resume=True)
    expected = (
        rf"no intact checkpoint to resume from in {re.escape(str(checkpoints))}: "
        rf"{re.escape(str(checkpoints / 'checkpoint-00000004' / 'model.safetensors'))} is not a complete "
        rf"safetensors file .*; {re.escape(str(checkpoints / 'checkpoint-00000002' / 'model.safetensors'))} "
        r"is not a complete safetensors file .*--overwrite"
    )
    with pytest.raises(CheckpointError, match=expected):
        train(resume, dataloader_factory=_factory(s2_chips), show_progress=False)

    # what the checks cannot see (whole files of another model) still names the checkpoint
    shutil.rmtree(checkpoints)
    shutil.copytree(tmp_path / "intact", checkpoints)
    shutil.copy(converted_micro / "model.safetensors", checkpoints / "checkpoint-00000004" / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=rf"cannot load the checkpoint {re.escape(str(checkpoints))}/checkpoint-00000004 "
    ):
        train(resume, dataloader_factory=_factory(s2_chips), show_progress=False)
    # a checkpoint of another number of processes
    shutil.copy(tmp_path / "intact" / "checkpoint-00000004" / "model.safetensors", checkpoints / "checkpoint-00000004")
    state_path = checkpoints / "checkpoint-00000004" / "trainer_state.json"
    state_path.write_text(json.dumps({**json.loads(state_path.read_text()), "world_size": 2}))
    shutil.copy(
        checkpoints / "checkpoint-00000004" / "clay_rank0.pt", checkpoints / "checkpoint-00000004" / "clay_rank1.pt"
    )
    with pytest.raises(CheckpointError, match=r"checkpoint-00000004 was written by 2 process\(es\) and this run has 1"):
        train(resume, dataloader_factory=_factory(s2_chips), show_progress=False)


def test_checkpoints_and_the_final_model_follow_the_umask(tmp_path, s2_chips):
    previous = os.umask(0o022)
    try:
        train(
            _config(tmp_path, max_steps=2, checkpoint_every=1),
            dataloader_factory=_factory(s2_chips),
            show_progress=False,
        )
    finally:
        os.umask(previous)
    written = [tmp_path / "final", tmp_path / "checkpoints", tmp_path / "run.json", tmp_path / "metrics.jsonl"]
    written += [p for folder in (tmp_path / "final", tmp_path / "checkpoints") for p in folder.rglob("*")]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert "checkpoints/checkpoint-00000002/model.safetensors" in modes and "final/model.safetensors" in modes
    assert modes == {name: "0o755" if (tmp_path / name).is_dir() else "0o644" for name in modes}


def test_train_script_flags_are_the_training_config_fields(capsys):
    """scripts/train.py's flags are TrainingConfig's fields, each with its help and default (clay_hf.cli), plus
    --quiet, --no-tune-allocator and --verbose: nothing restated by hand, so a new field is a new flag."""
    import dataclasses

    from .launch import load_script

    script = load_script(TESTS.parent / "scripts" / "train.py")
    actions = {a.dest: a for a in script.build_parser()._actions if a.dest != "help"}
    script_only = {"quiet", "no_tune_allocator", "verbose"}
    assert set(actions) == {f.name for f in dataclasses.fields(TrainingConfig)} | script_only
    assert all(action.help for action in actions.values())
    assert actions["output_dir"].option_strings == ["--output", "--output-dir"]
    config, options, common = script.parse_args(
        [
            "--dataset",
            "d",
            "--output",
            "o",
            "--betas",
            "0.8",
            "0.99",
            "--max-grad-norm",
            "0",
            "--mixed-precision",
            "bf16",
            "--resume",
            "--quiet",
        ]
    )
    assert config == TrainingConfig(
        dataset="d", output_dir="o", betas=(0.8, 0.99), max_grad_norm=0.0, mixed_precision="bf16", resume=True
    )
    assert options.quiet and not options.no_tune_allocator and not common.verbose
    assert script.parse_args(["--dataset", "d", "--output", "o"])[0] == TrainingConfig(dataset="d", output_dir="o")
    capsys.readouterr()
    assert script.main(["--dataset", "d", "--output", "o", "--mixed-precision", "fp8"]) == 2
    assert "error: argument --mixed-precision: invalid choice: 'fp8'" in capsys.readouterr().err


def test_a_second_run_into_the_same_folder_exits_with_one_line(tmp_path, sample_chip_dataset, capsys):
    """A run paused (SIGSTOP) after its first step holds the folder; train.py into it exits 1 with one line naming
    its pid. Once it has finished, train.py there is refused again (another run: exit 2) until --overwrite."""
    sys.path.insert(0, str(TESTS.parent / "scripts"))
    import train as train_script

    output, log = tmp_path / "run", tmp_path / "first.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    cmd = [
        sys.executable,
        str(TESTS / "_signal_train.py"),
        str(sample_chip_dataset),
        str(output),
        "2",
        "--signal",
        "STOP",
        "--at",
        "1",
    ]
    with open(log, "w") as stderr:
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)  # returns once it has stopped itself after step 1
        assert os.WIFSTOPPED(status), log.read_text()[-3000:]
        argv = [
            "--dataset",
            str(sample_chip_dataset),
            "--output",
            str(output),
            "--max-steps",
            "2",
            "--batch-size",
            "6",
            "--teacher",
            "tiny-random",
            "--teacher-image-size",
            "56",
            "--shuffle-buffer",
            "16",
            "--shuffle-shards",
            "1",
            "--checkpoint-every",
            "2",
            "--quiet",
        ]
        run_file = (output / "run.json").read_bytes()
        for extra in ([], ["--overwrite"], ["--resume"]):  # the lock comes before anything is read or deleted
            capsys.readouterr()
            assert train_script.main([*argv, *extra]) == 1  # failed work: another run holds the folder
            err = capsys.readouterr().err
            (error,) = [line for line in err.splitlines() if line.startswith("error: ")]  # one line
            assert error.startswith(f"error: another training run is writing to {output} (pid {first.pid} on ")
            assert "Traceback" not in err
        assert (output / "run.json").read_bytes() == run_file
    finally:
        first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, log.read_text()[-3000:]
    first_run = json.loads(out.splitlines()[-1])
    assert first_run["step"] == 2 and first_run["final_model"] == str(output / "final")

    capsys.readouterr()
    assert train_script.main(argv) == 2  # a mistake in the command: that --output needs --resume or --overwrite
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert error.startswith(
        f"error: {output} holds another training run (a checkpoint at step 2, final/, metrics.jsonl);"
    )
    assert train_script.main([*argv, "--resume", "--overwrite"]) == 2  # refused while parsing, before any work
    assert "error: resume and overwrite exclude each other" in capsys.readouterr().err
    assert train_script.main([*argv, "--overwrite"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["run_id"] != first_run["run_id"]


# ---- the real streamed loader ----------------------------------------------------------------------------------
def _real(tmp_path, dataset, **overrides) -> TrainingConfig:
    settings = dict(
        dataset=str(dataset),
        shuffle_buffer=16,
        shuffle_shards=1,
        batch_size=6,
        max_steps=6,
        checkpoint_every=2,
        time_latlon_dropout=0.2,
    )
    settings.update(overrides)
    return _config(tmp_path, **settings)


def test_train_cli_on_the_streamed_sample_chips_with_sentinel_1(tmp_path, sample_chip_dataset, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import train as train_script

    rc = train_script.main(
        [
            "--dataset",
            str(sample_chip_dataset),
            "--model",
            "tiny",
            "--output",
            str(tmp_path),
            "--max-steps",
            "64",
            "--batch-size",
            "8",
            "--learning-rate",
            "1e-3",
            "--warmup-steps",
            "4",
            "--teacher",
            "tiny-random",
            "--teacher-image-size",
            "56",
            "--shuffle-buffer",
            "16",
            "--shuffle-shards",
            "1",
            "--checkpoint-every",
            "32",
            "--log-every",
            "1",
            "--quiet",
            "--eval-dataset",
            str(sample_chip_dataset),
            "--eval-batches",
            "14",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    # The whole dataset (both sensors, 14 batches) with fixed masks, at step 0, at the checkpoint and at the end.
    evals = summary["eval"]
    assert [e["step"] for e in evals] == [0, 32, 64]
    print(
        "eval reconstruction",
        [round(e["eval_reconstruction_loss"], 4) for e in evals],
        "representation",
        [round(e["eval_representation_loss"], 4) for e in evals],
    )
    assert evals[-1]["eval_reconstruction_loss"] < 0.9 * evals[0]["eval_reconstruction_loss"]
    assert evals[-1]["eval_representation_loss"] < evals[0]["eval_representation_loss"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    assert all("representation_loss" in r for r in records)  # Sentinel-2 (RGB) and Sentinel-1 (VV, VH) batches
    assert summary["final_model"] == str(tmp_path / "final")
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(tmp_path / "final", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_resume_with_the_streamed_loader_is_exact(tmp_path, sample_chip_dataset):
    train(_real(tmp_path / "full", sample_chip_dataset), show_progress=False)
    part = train(_real(tmp_path / "part", sample_chip_dataset, stop_after=3), show_progress=False)
    assert part["step"] == 3
    state = torch.load(find_latest_checkpoint(tmp_path / "part") / "clay_rank0.pt", weights_only=False)
    assert state["data"]["batches_consumed"] == 3  # the loader's own position
    train(_real(tmp_path / "part", sample_chip_dataset, resume=True), show_progress=False)
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "part" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_epochs_of_a_small_dataset_start_without_datasets_pause(tmp_path, sample_chip_dataset, monkeypatch):
    """The main job's loader settings (buffer 256, 4 shards interleaved) on 108 chips: 6 batches per epoch, so 13
    steps start 3 epochs; none pays the 5 s sleep datasets takes after interleaving shards (the rows fit in the
    buffer, so the loader reads the shards one at a time)."""
    import time

    import datasets.iterable_dataset

    class CountingTime:  # the time module as datasets' iterables see it, with sleep counted (and not slept)
        def __init__(self):
            self.sleeps = []

        def sleep(self, seconds):
            self.sleeps.append(seconds)

        def __getattr__(self, name):
            return getattr(time, name)

    counting = CountingTime()
    monkeypatch.setattr(datasets.iterable_dataset, "time", counting)
    config = _real(
        tmp_path,
        sample_chip_dataset,
        shuffle_buffer=256,
        shuffle_shards=4,
        batch_size=16,
        max_steps=13,
        checkpoint_every=13,
        log_every=1,
        teacher=None,
    )
    assert train(config, show_progress=False)["step"] == 13
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "loss" in r] == [0] * 6 + [1] * 6 + [2]
    assert datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN not in counting.sleeps


def test_two_processes_train_on_disjoint_chips_with_synchronised_weights(tmp_path, sample_chip_dataset):
    proc = torchrun(TESTS / "_ddp_train.py", sample_chip_dataset, tmp_path, ACCELERATE_USE_CPU="1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    ids = [set(r["chip_ids"]) for r in ranks]
    assert ids[0] and ids[1] and ids[0].isdisjoint(ids[1])
    assert ranks[0]["summary"]["world_size"] == 2
    assert ranks[0]["weight_sums"] == ranks[1]["weight_sums"]  # DDP: the same weights on both ranks, every step
    assert len(ranks[0]["weight_sums"]) == 4
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(tmp_path / "final", output_loading_info=True)
    assert not any(info.values())


def test_two_processes_refuse_a_folder_with_another_run_together(tmp_path, sample_chip_dataset):
    """Only rank 0 takes the lock and looks at the folder; rank 1 learns its verdict instead of waiting for it."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    proc = torchrun(TESTS / "_ddp_train.py", sample_chip_dataset, tmp_path, timeout=240, ACCELERATE_USE_CPU="1")
    assert proc.returncode != 0
    assert proc.stderr.count(f"OutputExistsError: {tmp_path} holds another training run (metrics.jsonl);") == 2
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


@pytest.mark.parametrize("sig", ["KILL", "TERM"])
def test_a_killed_or_preempted_process_resumes_to_the_same_weights(tmp_path, sample_chip_dataset, sig):
    """SIGKILL during step 5 (last checkpoint: step 4) or SIGTERM after step 3 (checkpoint, clean exit), then
    --resume in a new process: the final weights equal an uninterrupted run's."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("_signal_train.py")
    env = {**__import__("os").environ, "PYTHONPATH": str(script.parents[1])}

    def run(output, *extra):
        cmd = [sys.executable, str(script), str(sample_chip_dataset), str(output), "7", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    full = run(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    at = "5" if sig == "KILL" else "3"
    stopped = run(tmp_path / "cut", "--signal", sig, "--at", at)
    if sig == "KILL":
        assert stopped.returncode == -9  # really killed: no clean-up ran
        assert find_latest_checkpoint(tmp_path / "cut").name == "checkpoint-00000004"
    else:
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert "stopped by SIGTERM at step 3" in stopped.stderr
        assert json.loads(stopped.stdout.splitlines()[-1])["step"] == 3
    assert not (tmp_path / "cut" / "final").exists()
    resumed = run(tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_fsdp2_shards_every_clay_layer_on_two_cpu_processes(tmp_path, sample_chip_dataset):
    """The model side of scripts/accelerate_configs/fsdp.yaml: fully_shard per ClayLayer, two real gloo processes."""
    proc = torchrun(TESTS / "_fsdp2_step.py", sample_chip_dataset, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["sharded"] and r["wrapped"] == 6 + 3  # tiny: 6 encoder + 3 decoder layers
        assert all(math.isfinite(v) for v in r["losses"]) and len(r["losses"]) == 2
        assert r["local_numel"] < 0.6 * ranks[0]["total_numel"]  # each process holds about half of the parameters
    from transformers import AutoModelForPreTraining

    model, info = AutoModelForPreTraining.from_pretrained(tmp_path / "final", output_loading_info=True)
    assert not any(info.values())


def test_train_help_has_examples():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    assert "examples:" in out and "accelerate launch" in out and "--resume" in out
    assert "--overwrite" in out


def test_the_final_model_records_that_it_was_pretrained_here_and_for_how_long(reference_run):
    from clay_hf.provenance import PROVENANCE_KEY, model_provenance

    config = json.loads((reference_run.parent / "config.json").read_text())
    assert config[PROVENANCE_KEY]["kind"] == "pretrained" and config[PROVENANCE_KEY]["steps"] == 8
    assert config[PROVENANCE_KEY]["base"] is None  # random weights
    label = model_provenance(config).label
    assert label.startswith("NOT a released Clay model: ") and "pre-trained here for 8 steps" in label
