"""The small real chest X-ray sample (../shared/data/covid_cxr_sample) as Derm-style cases.

Patients become cases (several real images each), written in the `derm_cases/generic` layout
over symlinks, as a user would do for their own data. Used by a test and the MICLe demo script.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

DEFAULT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid_cxr_sample"
LABELS = ("COVID-19", "Other pneumonia", "No Finding")


def finding_group(finding: str) -> str:
    return "COVID-19" if "COVID-19" in finding else "No Finding" if finding == "No Finding" else "Other pneumonia"


def patient_cases(sample: Path = DEFAULT_SAMPLE):
    """patient → (label, [file names], first metadata row); unlabelled ('todo') images dropped,
    files listed under two patient ids upstream kept with the first. Label: COVID-19 if any image
    shows it, else another pneumonia if any, else No Finding. Also returns the kept rows."""
    with open(Path(sample) / "metadata.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["finding"] != "todo"]
    cases, owner = {}, {}
    for r in rows:
        if owner.setdefault(r["filename"], r["patientid"]) != r["patientid"]:
            continue
        groups, files, meta = cases.setdefault(r["patientid"], (set(), [], r))
        groups.add(finding_group(r["finding"]))
        files.append(r["filename"])
    label = {pid: next(g for g in LABELS if g in groups) for pid, (groups, _, _) in cases.items()}
    return {pid: (label[pid], files, meta) for pid, (_, files, meta) in cases.items()}, rows


def write_manual(manual: Path, cases, sample: Path = DEFAULT_SAMPLE) -> Path:
    """Writes `cases.csv` + `images/` symlinks into `manual`; returns it."""
    manual = Path(manual)
    (manual / "images").mkdir(parents=True, exist_ok=True)
    with open(manual / "cases.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "image_path", "label", "sex", "age"])
        for pid, (label, files, meta) in cases.items():
            for name in files:
                if not (manual / "images" / name).exists():
                    os.symlink(Path(sample) / "images" / name, manual / "images" / name)
                writer.writerow([f"patient{pid}", f"images/{name}", label, meta["sex"],
                                 str(int(float(meta["age"]))) if meta["age"] else ""])
    return manual
