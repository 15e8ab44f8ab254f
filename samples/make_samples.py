"""Regenerate the sample studies: shared Kermany training images wrapped as DX DICOM.

Run from the repository root: .venv/bin/python samples/make_samples.py ../shared/data/kermany-cxr-224/train
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from cxrtriage.dicom.wrap import wrap_image

PICKS = {
    "normal-1": "NORMAL/IM-0115-0001.jpeg",
    "normal-2": "NORMAL/IM-0117-0001.jpeg",
    "pneumonia-1": "PNEUMONIA/person1_bacteria_1.jpeg",
    "pneumonia-2": "PNEUMONIA/person1000_virus_1681.jpeg",
}


def main(source: Path) -> None:
    out = Path(__file__).parent
    for number, (name, rel) in enumerate(PICKS.items(), start=1):
        pixels = np.asarray(Image.open(source / rel).convert("L"), dtype=np.uint8)
        ds = wrap_image(pixels, study_uid=generate_uid(), PatientName=f"SAMPLE^{number:02d}",
                        PatientID=f"SAMPLE{number:04d}", PatientAge="003Y",
                        StudyDescription="XR CHEST AP", SeriesDescription="AP",
                        ImageComments=f"Kermany et al. 2018, CC BY 4.0: {rel}")
        ds.save_as(out / f"{name}.dcm", enforce_file_format=True)
        print(out / f"{name}.dcm")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
