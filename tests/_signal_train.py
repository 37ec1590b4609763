"""Train on the sample chips and send this process a signal after a given step (a kill, a pre-emption, a pause).

Usage: python tests/_signal_train.py DATASET OUTPUT MAX_STEPS [--signal KILL|TERM|STOP --at STEP] [--resume]
"""

import argparse
import json
import os
import signal

from clay_hf.training.pretraining import TrainingConfig, train

parser = argparse.ArgumentParser()
parser.add_argument("dataset")
parser.add_argument("output")
parser.add_argument("max_steps", type=int)
parser.add_argument("--signal", choices=("KILL", "TERM", "STOP"), default=None)
parser.add_argument("--at", type=int, default=None)
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()


def after_step(step, model, losses):
    if args.signal and step == args.at:
        os.kill(os.getpid(), getattr(signal, f"SIG{args.signal}"))


config = TrainingConfig(
    dataset=args.dataset,
    output_dir=args.output,
    model="tiny",
    max_steps=args.max_steps,
    batch_size=6,
    learning_rate=1e-3,
    teacher="tiny-random",
    teacher_image_size=56,
    checkpoint_every=2,
    log_every=1,
    shuffle_buffer=16,
    shuffle_shards=1,
    time_latlon_dropout=0.2,
    resume=args.resume,
)
print(json.dumps(train(config, show_progress=False, step_callback=after_step)))
