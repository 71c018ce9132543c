"""MICLe on real chest X-rays: patients as cases, two different images of a patient as a pair.

Builds `derm_cases/generic` from a covid_cxr_sample folder (metadata.csv, images/), scores a freshly
initialised model, pretrains with MICLe, and scores it again: contrastive accuracy over the training cases
(the sample is too small for a held-out split to hold many multi-image patients).

    python scripts/micle_real_cxr.py --sample_dir ../shared/data/covid_cxr_sample --workdir /tmp/micle_cxr
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # simclr_med and tests

from simclr_med import experiment  # noqa: E402
from simclr_med.config import Config  # noqa: E402
from simclr_med.train import factory  # noqa: E402
from tests.fixtures import real_cxr  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample_dir", required=True,
                   help="the chest X-ray sample: a folder with metadata.csv and images/ "
                        "(in this project: ../shared/data/covid_cxr_sample)")
    p.add_argument("--workdir", required=True, help="where the manual dir, the TFDS data and the run go")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.sample_dir, "metadata.csv")):
        sys.exit(f"real chest X-ray sample not found: no metadata.csv in {args.sample_dir}")

    manual = os.path.join(args.workdir, "manual")
    if not os.path.exists(os.path.join(manual, "cases.csv")):
        sample = os.path.abspath(args.sample_dir)  # the symlinks must not depend on the working directory
        real_cxr.write_manual(manual, real_cxr.patient_cases(sample)[0], sample)
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
