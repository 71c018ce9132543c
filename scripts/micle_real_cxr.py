"""MICLe on real chest X-rays: patients as cases, two different images of a patient as a pair.

Builds `derm_cases/generic` from ../shared/data/covid_cxr_sample, scores a freshly initialised
model, pretrains with MICLe, and scores it again: contrastive accuracy over the training cases
(the sample is too small for a held-out split to hold many multi-image patients).

    python scripts/micle_real_cxr.py --workdir /tmp/micle_cxr [--steps 200]
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_med.train import factory  # noqa: E402
from simclr_med import experiment
from tests.fixtures import real_cxr
from simclr_med.config import Config  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--sample", default=str(real_cxr.DEFAULT_SAMPLE))
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.sample, "metadata.csv")):
        sys.exit(f"real chest X-ray sample not found at {args.sample}")

    manual = os.path.join(args.workdir, "manual")
    if not os.path.exists(os.path.join(manual, "cases.csv")):
        real_cxr.write_manual(manual, real_cxr.patient_cases(args.sample)[0], args.sample)
    cfg = Config(mode="train_then_eval", train_mode="pretrain", method="micle", dataset="derm_cases/generic",
                 manual_dir=manual, data_dir=os.path.join(args.workdir, "data"),
                 model_dir=os.path.join(args.workdir, "run"), eval_split="train", resnet_depth=18,
                 image_size=args.image_size, augmentation="crop_only", train_batch_size=args.batch_size,
                 train_steps=args.steps, optimizer="lars", learning_rate=0.075, learning_rate_scaling="sqrt",
                 warmup_epochs=1, temperature=0.2, num_proj_layers=2, checkpoint_steps=100, verbose=2)
    before = experiment.contrastive_scores(cfg, factory.contrastive_model(cfg, num_train_examples=1))
    after = experiment.run(cfg)["result"]
    report = {"before": before, "after": after}
    print(json.dumps({k: {m: v[m] for m in ("contrast_loss", "contrast_acc")} for k, v in report.items()}))


if __name__ == "__main__":
    main()
